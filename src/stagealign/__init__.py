"""stagealign: stage-aware preference alignment.

Iterative DPO / SLiC-HF / IPO whose data source (a static multi-model pool or the policy's own
samples) is chosen per iteration from a measured boundary score. The data flow, one module per
step: `boundary` (measure) -> `schedule` (decide) -> `data.pairs` (build pairs) ->
`training.preference` (train) -> `evaluate`; `pipeline` runs it resumably in a `rundir.RunDir`,
`grid` runs the path grid, `report` renders it. Importing the package imports nothing heavy.
"""

__version__ = "0.1.0"

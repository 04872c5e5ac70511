"""The path grid of the research: initial policies x methods x seeds x data paths / schedules.

    spec.py     the `grid:` config section and the cells it expands to (one run directory each)
    reuse.py    which finished cell's prefix a cell can adopt instead of retraining it
    execute.py  running the cells (prefixes adopted), here or on Ray, then the metrics
    ray_executor.py, ray_cluster.py  cells as Ray tasks, shared prefixes as their dependencies
    metrics.py  the paper's numbers from finished cells, with intervals over seeds -> grid.json
    demo.py     `stagealign demo`: the demo grid and its tables
"""

from stagealign.grid.execute import GridCellsFailed, run_grid
from stagealign.grid.metrics import calibration_summary, grid_metrics
from stagealign.grid.reuse import plan_reuse
from stagealign.grid.spec import (MANIFEST, METRICS, Cell, GridError, GridSpec, demo_config_path, grid_cells,
                                  load_grid_config, parse_grid, path_name)

__all__ = ["GridSpec", "GridError", "GridCellsFailed", "Cell", "load_grid_config", "parse_grid", "grid_cells", "plan_reuse", "run_grid",
           "grid_metrics", "calibration_summary", "path_name", "demo_config_path", "MANIFEST", "METRICS"]

"""Running a grid: every cell on this machine one after the other (`local`, the default) or as
tasks on a Ray cluster (`ray`, see grid/ray_executor.py); shared prefixes adopted, then the metrics.

Both executors run a cell the same way (`run_cell`): adopt what finished cells of its
(policy, seed) already computed, then run or resume the rest. They differ only in which cells
count as finished when a cell starts, so they write the same run directories and grid.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from stagealign import artifacts
from stagealign.config import RunConfig
from stagealign.grid.metrics import grid_metrics
from stagealign.grid.reuse import adopt, check_adopted, plan_reuse, realised
from stagealign.grid.spec import MANIFEST, Cell, GridError, GridSpec, grid_cells
from stagealign.ui import CellUI, NullUI, grid_ui

EXECUTORS = ("local", "ray")


class GridCellsFailed(GridError):
    """Some cells failed while the others finished; grid.json covers the finished ones.

    `failures` maps each failed cell's id to one line saying why; `metrics` is what
    `grid_metrics` wrote for the rest (None when no cell of the grid has finished).
    """

    def __init__(self, failures: dict[str, str], total: int, metrics: dict[str, Any] | None):
        self.failures, self.total, self.metrics = dict(failures), total, metrics
        lines = [f"{len(failures)} of {total} grid cells failed:"]
        lines += [f"  {cid}: {why}" for cid, why in failures.items()]
        super().__init__("\n".join(lines))


def run_grid(base: RunConfig, spec: GridSpec, out_dir: str | Path | None = None, ui=None, *,
             executor: str = "local", address: str | None = None) -> dict[str, Any]:
    """Run (or resume) every cell of the grid; write OUT/grid-cells.json and OUT/grid.json.

    Returns the metrics (`grid_metrics`). Finished cells and stages are skipped, shared prefixes
    are adopted rather than retrained (`grid.reuse`). `executor="ray"` runs the cells as Ray
    tasks (`grid.ray_executor`) on the cluster at `address`, or on a local Ray instance for this
    machine; there a failed cell does not stop the others, and `GridCellsFailed` is raised at the
    end (after grid.json is written) when any cell failed.
    """
    if executor not in EXECUTORS:
        raise GridError(f"unknown grid executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise GridError("an address is for a Ray cluster: use it with the ray executor (--executor ray)")
    if executor == "ray":
        from stagealign.grid.ray_cluster import import_ray

        import_ray()  # a missing Ray is one line, before anything is written
    out = Path(out_dir if out_dir is not None else base.run_dir)
    cells = grid_cells(base, spec, out)
    manifest = {"base_config": base.model_dump(mode="json"), "grid": spec.model_dump(mode="json"),
                "cells": [c.to_dict(out) for c in cells]}
    _merge_manifest(out, manifest)
    gui = grid_ui(ui or NullUI(), len(cells))
    for c in cells:
        gui.state(c.id, "pending")
    failures: dict[str, str] = {}
    with gui.display():
        if executor == "ray":
            from stagealign.grid.ray_executor import run_cells

            failures = run_cells(cells, out, gui, resources=spec.resources, address=address)
        else:
            _run_local(cells, gui)
    if not failures:
        return grid_metrics(out)
    try:
        metrics = grid_metrics(out)
    except GridError:  # no cell finished, ever
        metrics = None
    raise GridCellsFailed(failures, len(cells), metrics)


def run_cell(cell: Cell, finished: list[Cell], ui, log: Callable[[str], None]) -> None:
    """Run (or resume) one cell after adopting what the `finished` cells already computed.

    Sets `cell.sig` (the data sources it realised), which later cells plan their reuse from.
    """
    from stagealign.pipeline import Run

    plan = plan_reuse(cell, finished)
    with cell.run.session():  # adopt under the cell's own directory lock
        note = adopt(cell, plan)
    if note:
        log(f"[grid] {cell.id}: {note}")
    Run(cell.cfg, ui=ui).execute()
    check_adopted(cell, plan)
    cell.sig = realised(cell)


def _run_local(cells: list[Cell], gui) -> None:
    """Every cell in order in this process; a failing cell stops the grid (its error is raised)."""
    finished: list[Cell] = []
    for i, cell in enumerate(cells):
        gui.state(cell.id, "running")
        already = cell.run.finished
        try:
            run_cell(cell, finished, CellUI(gui, cell.id), gui.log)
        except BaseException as exc:
            gui.state(cell.id, "failed", first_line(exc))
            raise
        finished.append(cell)
        gui.state(cell.id, "done")
        gui.log(f"[grid] {i + 1}/{len(cells)} {cell.id}: {'already done' if already else 'done'}")


def first_line(exc: BaseException) -> str:
    """An error as the one line a summary shows: its message's first line, or its type."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _merge_manifest(out: Path, manifest: dict) -> None:
    """Keep cells of earlier invocations (e.g. fewer seeds) listed, so metrics cover them too."""
    path = out / MANIFEST
    if path.is_file():
        old = artifacts.read_json(path)
        if old.get("base_config") == manifest["base_config"]:
            seen = {c["dir"] for c in manifest["cells"]}
            manifest["cells"] += [c for c in old.get("cells", []) if c["dir"] not in seen]
    artifacts.write_json(path, manifest)

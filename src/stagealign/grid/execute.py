"""Running a grid: every cell in order on this machine, shared prefixes adopted, then the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stagealign import artifacts
from stagealign.config import RunConfig
from stagealign.grid.metrics import grid_metrics
from stagealign.grid.reuse import adopt, check_adopted, plan_reuse, realised
from stagealign.grid.spec import MANIFEST, Cell, GridSpec, grid_cells
from stagealign.ui import CellUI, NullUI, grid_ui


def run_grid(base: RunConfig, spec: GridSpec, out_dir: str | Path | None = None, ui=None) -> dict[str, Any]:
    """Run (or resume) every cell of the grid; write OUT/grid-cells.json and OUT/grid.json.

    Returns the metrics (`grid_metrics`). Finished cells and stages are skipped, shared prefixes
    are adopted rather than retrained (`grid.reuse`).
    """
    from stagealign.pipeline import Run

    out = Path(out_dir if out_dir is not None else base.run_dir)
    cells = grid_cells(base, spec, out)
    manifest = {"base_config": base.model_dump(mode="json"), "grid": spec.model_dump(mode="json"),
                "cells": [c.to_dict(out) for c in cells]}
    _merge_manifest(out, manifest)
    gui = grid_ui(ui or NullUI(), len(cells))
    finished: list[Cell] = []
    with gui.display():
        for i, cell in enumerate(cells):
            gui.cell(i, len(cells), cell.id)
            already = cell.run.finished
            plan = plan_reuse(cell, finished)
            with cell.run.session():  # adopt under the cell's own directory lock
                note = adopt(cell, plan)
            if note:
                gui.log(f"[grid] {cell.id}: {note}")
            Run(cell.cfg, ui=CellUI(gui, cell.id)).execute()
            check_adopted(cell, plan)
            cell.sig = realised(cell)
            finished.append(cell)
            gui.log(f"[grid] {i + 1}/{len(cells)} {cell.id}: {'already done' if already else 'done'}")
        gui.cell(len(cells), len(cells), "-")
    return grid_metrics(out)


def _merge_manifest(out: Path, manifest: dict) -> None:
    """Keep cells of earlier invocations (e.g. fewer seeds) listed, so metrics cover them too."""
    path = out / MANIFEST
    if path.is_file():
        old = artifacts.read_json(path)
        if old.get("base_config") == manifest["base_config"]:
            seen = {c["dir"] for c in manifest["cells"]}
            manifest["cells"] += [c for c in old.get("cells", []) if c["dir"] not in seen]
    artifacts.write_json(path, manifest)

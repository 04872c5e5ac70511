"""`stagealign demo` / `make demo`: the research experiment on the synthetic world, end to end.

Runs the demo grid shipped with the package (configs/demo-grid.yaml), then puts the weak / strong
`auto` vs `on->on` iteration table (the "on-policy is always better" habit against the measured
stage) above the grid's tables, and writes OUT/demo.md and OUT/report.md with the plots.
"""

from __future__ import annotations

from pathlib import Path

from stagealign import artifacts
from stagealign.grid.execute import run_grid
from stagealign.grid.spec import demo_config_path, grid_cells, load_grid_config


def run_demo(out: Path, *, scale: str | None = None, seeds: list[int] | None = None,
             overrides: list[str] | None = None, ui=None) -> tuple[str, Path]:
    """Run (or resume) the demo grid; returns the tables as Markdown and the report's path."""
    from stagealign.report import iteration_table, report_tables, write_grid_report

    extra = list(overrides or [])
    if scale is not None:
        extra.append(f"world.scale={scale}")
    if seeds:
        extra.append(f"grid.seeds=[{','.join(str(s) for s in seeds)}]")
    base, spec = load_grid_config(demo_config_path(), extra)
    metrics = run_grid(base, spec, out, ui=ui)
    first = min(spec.seeds) if spec.seeds else base.seed
    picked = [c for c in grid_cells(base, spec, out)
              if c.policy in ("weak", "strong") and c.name in ("auto", "path-on-on") and c.seed == first]
    table = iteration_table([c.run.read_summary() for c in picked])
    text = table + "\n\n" + report_tables(metrics)
    artifacts.write_text(Path(out) / "demo.md", text + "\n")
    return text, write_grid_report(out, metrics)

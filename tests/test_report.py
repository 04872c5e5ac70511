"""`stagealign report`: Markdown tables and valid PNG plots for a grid and for a single run."""

import pytest

from conftest import cli
from test_grid import fake_grid, shared_grid
from stagealign.grid import GridError
from stagealign.report import fmt_ci, write_report

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["effectiveness.png", "reward_paths.png", "bs_trajectories.png", "bs_calibration.png",
           "diversity_quality.png"]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    """The 2-iteration tiny grid of test_grid.py (built once per session): 4 paths + auto, seed 0."""
    return shared_grid(tmp_path_factory)[0]


def _valid_png(path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    assert path.read_bytes()[:8] == PNG, path
    img = plt.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.shape[2] in (3, 4)


def test_grid_report_tables_and_plots(grid_dir):
    path = write_report(grid_dir)
    assert path == grid_dir / "report.md"
    text = path.read_text()
    for heading in ("One-iteration effectiveness", "Reward along each path", "Best path, auto and blend",
                    "Boundary score trajectories", "Boundary score calibration", "diversity vs quality"):
        assert f"## {heading}" in text or heading in text
    for header in ("| policy | method | seeds | BS of init | static gain | on-policy gain | on/off ratio |",
                   "| policy | method | path / schedule | reward @0 | reward @1 | reward @2 | gain it1 | gain it2 |",
                   "| policy | method | best path |", "| policy | method | seed | checkpoint |",
                   "| policy | method | candidates | sets | distinct-1 | distinct-2 | 2-gram diversity |"):
        assert header in text, header
    for row in ("| weak | dpo | path-off-on |", "| weak | dpo | path-on-on |", "| weak | dpo | static pool |",
                "| weak | dpo | on-policy @ init |", "| weak | dpo | on-policy @ off |",
                "| weak | dpo | 0 | init | 1 |",
                "| weak | dpo | 0 | on | 2 |"):
        assert row in text, row
    assert "[n/a]" in text  # one seed: no interval, and no crash
    for f in FIGURES:
        assert f"]({f})" in text
        _valid_png(grid_dir / f)
    assert (grid_dir / "grid.json").is_file()


def test_single_run_report(grid_dir):
    run = grid_dir / "weak" / "dpo" / "seed0" / "auto"
    text = write_report(run).read_text()
    assert "| run | iter | source | BS [95% CI] |" in text and "| weak / auto (bs) | 2 |" in text
    assert "](reward.png)" in text
    _valid_png(run / "reward.png")


def test_report_cli_and_errors(grid_dir, tmp_path):
    r = cli("report", str(grid_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(grid_dir / "report.md")
    with pytest.raises(GridError, match="neither"):
        write_report(tmp_path)


def test_fmt_ci():
    assert fmt_ci({"mean": 0.5, "lo": 0.25, "hi": 0.75}) == "0.500 [0.250, 0.750]"
    assert fmt_ci({"mean": 0.5, "lo": None, "hi": None}) == "0.500 [n/a]"
    assert fmt_ci({"mean": 0.5, "lo": float("-inf"), "hi": float("inf")}) == "0.500 [n/a]"
    assert fmt_ci(None) == "-"


def test_multi_seed_report_has_intervals(tmp_path):
    out = fake_grid(tmp_path / "g", {0: (0.10, 0.30), 1: (0.12, 0.33), 2: (0.08, 0.28)})
    text = write_report(out).read_text()
    assert "[n/a]" not in text.split("## Candidate")[0]
    assert "| weak | dpo | 3 | 0.610 [0.585, 0.635] | 0.100 [0.050, 0.150] |" in text
    for f in FIGURES:
        _valid_png(out / f)


def test_demo_says_which_regime_its_world_is_in_and_why_auto_chose(tmp_path_factory):
    from stagealign.grid.demo import regime
    from stagealign.grid.spec import grid_cells

    out, base, spec, metrics, _ = shared_grid(tmp_path_factory)
    autos = [c for c in grid_cells(base, spec, out) if c.name == "auto"]
    text = regime(base, metrics, autos)
    assert "no coverage gap" in text  # the tiny world has no knowledge tokens
    eff = metrics["groups"][0]["effectiveness"]
    assert f"static {eff['static_gain']['mean']:+.3f}, on-policy {eff['onpolicy_gain']['mean']:+.3f}" in text
    for k in (1, 2):  # auto's recorded reason for each iteration, as the run wrote it
        dec = autos[0].run.read_stage(k, "decide")
        assert f"auto, iteration {k}: {dec['source']}: {dec['reason']}" in text
    covered = regime(base.model_copy(update={"world": base.world.model_copy(update={"knowledge_tokens": 2,
                                                                                    "kappa": 1.0})}), metrics, [])
    assert "a coverage gap" in covered and "auto, iteration" not in covered

"""The grid on Ray (`--executor ray`): same numbers as the local executor, a killed worker's cell
retried, a bad cell failing alone, the task graph, the shared-storage check, Ray optional.

One local Ray instance (2 CPUs, loopback only) serves the whole module; the grid is the tiny
world's weak policy x DPO x seed 0, one iteration, paths off and on plus auto under the bs rule (cell `bs`).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli, tiny_config, tiny_world_overrides
from stagealign import artifacts
from stagealign.grid import GridError, grid_cells, load_grid_config, parse_grid, run_grid
from stagealign.grid.ray_cluster import check_grid_dir, import_ray, mark_grid_dir
from stagealign.grid.ray_executor import dependencies
from stagealign.ui import CELL_STATES, NullUI

SPEC = {"iterations": 1, "paths": "all", "schedules": ["bs"], "seeds": [0]}  # a probe rule: predicted, adopted
CELLS = ["weak/dpo/seed0/path-off", "weak/dpo/seed0/path-on", "weak/dpo/seed0/bs"]


class LogUI(NullUI):
    """A plain UI that keeps the lines: the grid display logs every cell's state changes."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, msg: str) -> None:
        self.lines.append(msg)


def states(lines: list[str], cid: str) -> list[str]:
    """The states the display logged for one cell, in order."""
    head = f"[grid] {cid}: "
    words = [line[len(head):].split(" ")[0] for line in lines if line.startswith(head)]
    return [w for w in words if w in CELL_STATES]


def numbers(out) -> dict:
    """grid.json without where it lives: every metric, interval and choice."""
    m = artifacts.read_json(out / "grid.json")
    m.pop("grid_dir")
    return m


@pytest.fixture(scope="module")
def ray_local():
    pytest.importorskip("ray")
    from stagealign.grid.ray_cluster import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """The reference: the same grid with the local executor, one torch thread like a Ray task."""
    import torch

    out = tmp_path_factory.mktemp("local") / "grid"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_grid(tiny_config(out, "policy.testbed=weak"), parse_grid(SPEC), out)
    finally:
        torch.set_num_threads(threads)
    return numbers(out)


def ray_grid(out):
    ui = LogUI()
    run_grid(tiny_config(out, "policy.testbed=weak"), parse_grid(SPEC), out, ui=ui, executor="ray")
    return numbers(out), ui.lines


def test_ray_grid_gives_the_local_numbers(ray_local, local_grid, tmp_path):
    got, lines = ray_grid(tmp_path / "grid")
    assert got == local_grid
    # every cell went running -> done, and path-on ran only after path-off, from its prefix
    assert [states(lines, cid) for cid in CELLS] == [["running", "done"]] * 3, lines
    assert lines.index("[grid] weak/dpo/seed0/path-off: done") < lines.index(
        next(x for x in lines if x.startswith("[grid] weak/dpo/seed0/path-on: running")))
    assert sum("[iter_0/evaluate]" in line for line in lines) == 1, "iteration 0 is evaluated once, then adopted"
    assert any(line.startswith("[grid] weak/dpo/seed0/path-on: adopted iterations 0..0 from weak/dpo/seed0/path-off")
               for line in lines)


def test_a_worker_killed_during_a_cell_is_retried_with_the_same_numbers(ray_local, local_grid, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("STAGEALIGN_GRID_FAULT", "weak/dpo/seed0/path-on=train-step:1")  # first attempt only
    got, lines = ray_grid(tmp_path / "grid")
    assert got == local_grid
    assert states(lines, CELLS[1]) == ["running", "retried", "done"], lines
    (retried,) = [line for line in lines if line.startswith(f"[grid] {CELLS[1]}: retried")]
    assert "attempt 2" in retried
    assert states(lines, CELLS[0]) == states(lines, CELLS[2]) == ["running", "done"]
    # the killed attempt recorded no training; the retry trained once, resuming after the recorded stages
    assert sum(line.startswith(f"{CELLS[1]} [iter_1/train]") for line in lines) == 1
    assert not any(line.startswith(f"{CELLS[1]} [iter_1/build]") for line in lines[lines.index(retried):])


def test_a_bad_cell_fails_alone_with_a_one_line_error(ray_local, tmp_path):
    """`nosuch` passes validation but fails at run time; weak's cell still finishes; exit status 2."""
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("grid:\n  policies: [weak, nosuch]\n  iterations: 1\n  paths: [off]\n  schedules: []\n"
                   "  seeds: [0]\n")
    out = tmp_path / "out"
    over = [*tiny_world_overrides(), "data.eval_prompts=64", "boundary.probe_prompts=32", "boundary.min_prompts=16",
            "boundary.batch_prompts=16", "training.batch_size=32"]
    r = cli("grid", str(cfg), *over, "--out", str(out), "--executor", "ray", "--address",
            ray_local.get_runtime_context().gcs_address, "--no-report", timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-2:] == [
        "error: 1 of 2 grid cells failed:",
        "  nosuch/dpo/seed0/path-off: initial policy nosuch: unknown testbed policy 'nosuch'; "
        "this world has: boundary, strong, weak"]
    m = artifacts.read_json(out / "grid.json")
    assert [(g["policy"], list(g["cells"])) for g in m["groups"]] == [("weak", ["path-off"])]
    assert "weak" in r.stdout and "path" in r.stdout  # the finished cell's table is printed


def test_cells_wait_for_the_cells_whose_prefix_they_adopt(tmp_path):
    base, spec = load_grid_config(None, [f"run_dir={tmp_path}", "grid.methods=[dpo,slic-hf]", "grid.iterations=2",
                                         "grid.schedules=[auto,blend]", "grid.resources={num_cpus: 2, num_gpus: 0.5}"])
    assert (spec.resources.num_cpus, spec.resources.num_gpus) == (2, 0.5)
    cells = grid_cells(base, spec, tmp_path)
    names = [f"{c.method}/{c.name}" for c in cells]
    waits = {names[i]: sorted(names[j] for j in deps) for i, deps in enumerate(dependencies(cells))}
    dpo = ["dpo/path-off-off", "dpo/path-off-on", "dpo/path-on-off", "dpo/path-on-on"]
    assert waits["dpo/path-off-off"] == []  # the group's first cell computes iteration 0
    assert waits["dpo/path-off-on"] == ["dpo/path-off-off"]  # shares iteration 1
    assert waits["dpo/path-on-off"] == ["dpo/path-off-off"]  # shares iteration 0 only
    assert waits["dpo/path-on-on"] == ["dpo/path-on-off"]
    assert waits["dpo/auto"] == sorted(dpo)  # the adaptive schedule needs every path's measurements
    assert waits["dpo/blend"] == sorted([*dpo, "dpo/auto"])
    assert waits["slic-hf/path-off-off"] == ["dpo/path-off-off"]  # another method: iteration 0 only
    assert waits["slic-hf/path-on-on"] == ["slic-hf/path-on-off"]
    with pytest.raises(GridError, match="grid.resources.num_cpus"):
        parse_grid({"resources": {"num_cpus": 0}})


def test_a_node_that_cannot_see_the_grid_directory_fails_in_one_line(tmp_path):
    import socket

    token = mark_grid_dir(tmp_path / "grid")
    check_grid_dir(tmp_path / "grid", token)  # this machine sees it
    elsewhere = tmp_path / "not-shared"
    with pytest.raises(GridError) as err:
        check_grid_dir(elsewhere, token)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(elsewhere) in msg and socket.gethostname() in msg
    assert "storage every node sees" in msg
    mark_grid_dir(tmp_path / "grid")  # a newer invocation's marker: this one's tasks must not go on
    with pytest.raises(GridError, match="belongs to another invocation"):
        check_grid_dir(tmp_path / "grid", token)


def test_ray_is_optional(monkeypatch, tmp_path):
    code = "import sys, stagealign.cli, stagealign.grid, stagealign.grid.execute; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr  # the local executor never imports Ray
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(GridError) as err:
        import_ray()
    assert str(err.value) == ("--executor ray needs Ray, which is not installed: pip install 'stagealign[ray]'")
    with pytest.raises(GridError, match="needs Ray"):
        run_grid(tiny_config(tmp_path / "g"), parse_grid(SPEC), tmp_path / "g", executor="ray")
    assert not (tmp_path / "g").exists(), "nothing is written before the executor is known to work"

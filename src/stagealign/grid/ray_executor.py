"""`stagealign grid --executor ray`: every cell a Ray task, shared prefixes as task dependencies.

Ray does the scheduling, placement and retrying; this module only turns the grid's reuse plan
into a task graph and follows it:

- `dependencies`: a cell waits for the cells whose run directories it may adopt (grid/reuse.py).
  A path cell waits for the earlier cell of its (policy, seed) with the longest shared prefix
  (off->on waits for off->off; the group's first cell gives iteration 0 to the others); `auto`,
  `blend` and the fixed schedules wait for every earlier cell of their (policy, method, seed),
  because their decisions need those cells' measurements. Each task receives its upstream
  tasks' results (ObjectRefs passed as arguments, so Ray orders them) and runs
  `execute.run_cell` against exactly those finished cells.
- One `prepare` task per initial policy builds its provider first (the testbed's SFT, hub
  downloads), so that cells of several seeds or methods do not all fill the same cache at once.
- A task asks for `grid.resources` (num_cpus, num_gpus), uses that many torch threads, and is
  retried when its worker is lost (SIGKILL, out of memory, a lost node: `max_retries`) or on a
  transient error (`RETRYABLE`); runs are resumable, so a retried cell continues from its run
  directory. Errors a user must fix (a bad config) are not retried.
- The run directories must be on storage every node sees: every task checks the marker the
  driver wrote into the grid directory before touching anything (grid/ray_cluster.py).
- A `ui.CellBoard` actor counts attempts and carries log lines back, so the driver's display
  shows each cell pending / running / retried / done / failed while the grid runs.

Fault injection (tests only): ``STAGEALIGN_GRID_FAULT="<cell id>=<fault point>"`` (several
separated by ``;``) sets ``STAGEALIGN_FAULT`` (`artifacts.fault`) for the first attempt of that
cell, e.g. ``weak/dpo/seed0/path-on=train-step:1`` kills its worker after one optimizer step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stagealign import artifacts
from stagealign.grid.execute import first_line, run_cell
from stagealign.grid.ray_cluster import check_grid_dir, mark_grid_dir, node_label, ray_session
from stagealign.grid.spec import Cell, CellResources
from stagealign.ui import CellBoard, NullUI

FAULT_ENV = "STAGEALIGN_GRID_FAULT"
RETRIES = 2  # extra attempts per task, for lost workers and transient errors alike
RETRYABLE = (artifacts.RunLockedError, OSError)  # transient: a lock not yet released, NFS / network errors
# Set on the driver, meant for the cells wherever they run (a local instance inherits them anyway).
FORWARD_ENV = ("STAGEALIGN_CACHE", "STAGEALIGN_CPU_BF16", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
               "TOKENIZERS_PARALLELISM")


# --------------------------------------------------------------------------------- the graph
def _shared(a: Cell, b: Cell) -> int:
    """Iterations two path cells share: same method and the same first data sources."""
    if a.kind != "path" or b.kind != "path" or a.method != b.method:
        return 0
    n = 0
    for x, y in zip(a.path or [], b.path or []):
        if x != y:
            break
        n += 1
    return n


def dependencies(cells: list[Cell]) -> list[tuple[int, ...]]:
    """For each cell, the indices of the earlier cells it waits for (see the module docstring)."""
    deps: list[tuple[int, ...]] = []
    for i, cell in enumerate(cells):
        earlier = [j for j in range(i) if cells[j].group == cell.group]
        if not earlier:
            deps.append(())
        elif cell.kind == "path":
            deps.append((max(earlier, key=lambda j: (_shared(cells[j], cell), -j)),))
        else:
            same = tuple(j for j in earlier if cells[j].method == cell.method)
            deps.append(same or (earlier[0],))
    return deps


# --------------------------------------------------------------------------------- the tasks
class _BoardUI(NullUI):
    """A task's UI: log lines (prefixed like the local executor's) go to the driver through the board."""

    def __init__(self, board, i: int | None, prefix: str = ""):
        self.board, self.i, self.prefix = board, i, prefix

    def log(self, msg: str) -> None:
        self.board.log.remote(self.i, f"{self.prefix} {msg}" if self.prefix else msg)


@contextlib.contextmanager
def _worker(env: dict[str, str], fault: str | None, threads: int) -> Iterator[None]:
    """A task's process settings: the driver's forwarded environment, the torch threads its
    resources allow, and the test fault of this attempt (never a leftover one)."""
    import torch

    from stagealign.quiet import quiet_libraries

    keys = [*env, artifacts.FAULT_ENV, "OMP_NUM_THREADS"]
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(env)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.pop(artifacts.FAULT_ENV, None)
    if fault:
        os.environ[artifacts.FAULT_ENV] = fault
    torch.set_num_threads(threads)
    quiet_libraries()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare_task(cfg, out: str, token: str, env: dict, threads: int, board, who: str) -> bool:
    """Build the provider of an initial policy once (fills the caches its cells then read)."""
    from stagealign.providers import build_provider

    with _worker(env, None, threads):
        check_grid_dir(out, token)
        build_provider(cfg, log=_BoardUI(board, None, who).log)
    return True


def _cell_task(cells: list[Cell], i: int, out: str, token: str, env: dict, fault: str | None, threads: int,
               board, *upstream: Any) -> dict[int, list]:
    """Run cell i against its finished upstream cells; returns {index: realised sources} for
    them and itself (what the cells downstream plan their reuse from)."""
    import ray

    attempt = ray.get(board.start.remote(i, node_label()))
    cell = cells[i]
    with _worker(env, fault if attempt == 1 else None, threads):
        check_grid_dir(out, token)
        done: dict[int, list] = {}
        for result in upstream:
            if isinstance(result, dict):  # a prepare task returns True
                done.update(result)
        finished = []
        for j in sorted(done):
            cells[j].sig = [tuple(s) for s in done[j]]
            finished.append(cells[j])
        run_cell(cell, finished, _BoardUI(board, i, cell.id), _BoardUI(board, i).log)
    return {**done, i: [list(s) for s in cell.sig]}


# --------------------------------------------------------------------------------- the driver
def _faults() -> dict[str, str]:
    spec = os.environ.get(FAULT_ENV, "")
    pairs = [item.split("=", 1) for item in spec.split(";") if "=" in item]
    return {cid.strip(): point.strip() for cid, point in pairs}


def _reason(ray, exc: BaseException) -> str:
    """One line for a failed task: the cell's own error, or how its worker was lost."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        if cause is exc:
            return first_line(exc)
        mod = type(cause).__module__ or ""
        plain = mod.startswith("stagealign") or isinstance(cause, (ValueError, OSError))
        return first_line(cause) if plain else f"{type(cause).__name__}: {first_line(cause)}"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return f"its worker died on all {RETRIES + 1} attempts (killed, out of memory or crashed); see Ray's worker logs"
    return first_line(exc)


def run_cells(cells: list[Cell], out: Path, gui, *, resources: CellResources, address: str | None = None,
              num_cpus: int | None = None) -> dict[str, str]:
    """Submit every cell as a Ray task, follow them on `gui`; returns {failed cell id: why}."""
    with ray_session(address, num_cpus) as ray:
        token = mark_grid_dir(out)
        board = ray.remote(num_cpus=0, max_restarts=0)(CellBoard).remote()
        threads = max(1, int(resources.num_cpus))
        opts = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "max_retries": RETRIES,
                "retry_exceptions": list(RETRYABLE)}
        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        faults = _faults()
        prepare_fn, cell_fn = ray.remote(_prepare_task), ray.remote(_cell_task)
        prepared: dict[str, Any] = {}
        for c in cells:
            if c.policy not in prepared:
                who = f"[prepare {c.policy}]"
                prepared[c.policy] = prepare_fn.options(name=f"prepare {c.policy}", **opts).remote(
                    c.cfg, str(out), token, env, threads, board, who)
        cells_ref = ray.put(cells)
        deps = dependencies(cells)
        refs: list = []
        for i, c in enumerate(cells):
            upstream = [refs[j] for j in deps[i]] or [prepared[c.policy]]
            refs.append(cell_fn.options(name=c.id, **opts).remote(
                cells_ref, i, str(out), token, env, faults.get(c.id), threads, board, *upstream))
        return _follow(ray, cells, refs, deps, prepared, board, gui)


def _follow(ray, cells: list[Cell], refs: list, deps: list[tuple[int, ...]], prepared: dict[str, Any], board,
            gui) -> dict[str, str]:
    """Show every cell's state until all tasks ended; name why each failed cell failed."""
    index = {ref: i for i, ref in enumerate(refs)}
    started: set[int] = set()
    failures: dict[str, str] = {}
    waiting = list(refs)

    def show(ev: tuple) -> None:
        if ev[0] == "start":
            _, i, attempt, node = ev
            started.add(i)
            if attempt == 1:
                gui.state(cells[i].id, "running", f"on {node}")
            else:
                gui.state(cells[i].id, "retried", f"attempt {attempt} on {node}")
        else:
            gui.log(ev[2])

    def end(i: int, ref) -> None:
        try:
            ray.get(ref)
        except ray.exceptions.RayError as exc:
            why = _reason(ray, exc) if i in started else _upstream_reason(ray, cells, i, deps, prepared, failures)
            failures[cells[i].id] = why
            gui.state(cells[i].id, "failed", why)
        else:
            gui.state(cells[i].id, "done")

    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
        events = ray.get(board.drain.remote())
        ended = {index[ref] for ref in ready}
        for ev in events:  # what the cells that ended did, then their end, then the rest (later cells)
            if ev[1] in ended:
                show(ev)
        for ref in sorted(ready, key=index.get):  # an upstream cell before the cells waiting for it
            end(index[ref], ref)
        for ev in events:
            if ev[1] not in ended:
                show(ev)
    for ev in ray.get(board.drain.remote()):
        show(ev)
    return failures


def _upstream_reason(ray, cells: list[Cell], i: int, deps: list[tuple[int, ...]], prepared: dict[str, Any],
                     failures: dict[str, str]) -> str:
    """Why a cell never started: the cell it adopts from failed, or its initial policy did."""
    for j in deps[i]:
        if cells[j].id in failures:
            return f"not run: it adopts from {cells[j].id}, which failed"
    try:
        ray.get(prepared[cells[i].policy])
    except ray.exceptions.RayError as exc:
        return f"initial policy {cells[i].policy}: {_reason(ray, exc)}"
    return "not run: an upstream task failed"

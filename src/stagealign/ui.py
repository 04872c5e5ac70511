"""Progress and log output: rich in the terminal, silent in library use; one run or a whole grid."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class NullUI:
    def log(self, msg: str) -> None:
        pass

    @contextlib.contextmanager
    def task(self, desc: str, total: int | None) -> Iterator:
        yield lambda n=1, total=None: None


class RichUI(NullUI):
    """Rich progress bars for generation, judging and training; log lines above them."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    def log(self, msg: str) -> None:
        self.console.print(msg, highlight=False, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, desc: str, total: int | None) -> Iterator:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as prog:
            tid = prog.add_task(desc, total=total)

            def advance(n: int = 1, total: int | None = None) -> None:
                if total is not None:
                    prog.update(tid, total=total)
                prog.advance(tid, n)

            yield advance


class CellUI(NullUI):
    """Prefixes a cell's log lines with its id; stage bars go to the grid display."""

    def __init__(self, parent, prefix: str):
        self.parent, self.prefix = parent, prefix

    def log(self, msg: str) -> None:
        self.parent.log(f"{self.prefix} {msg}")

    def task(self, desc: str, total: int | None):
        return self.parent.task(desc, total)


CELL_STATES = ("pending", "running", "retried", "done", "failed")


class CellStates:
    """Every cell's state, shared by both grid displays.

    Executors report transitions (`set`); "retried" is a cell running again after its worker was
    lost or it raised a retryable error, so a live view tells a slow cell from a recovering one.
    """

    def __init__(self):
        self.state: dict[str, str] = {}

    def set(self, cid: str, state: str) -> bool:
        """Record a transition; False when the cell was already in that state."""
        if state not in CELL_STATES:
            raise ValueError(f"unknown cell state {state!r}; known: {', '.join(CELL_STATES)}")
        changed = self.state.get(cid) != state
        self.state[cid] = state
        return changed

    def count(self, state: str) -> int:
        return sum(1 for s in self.state.values() if s == state)

    def line(self) -> str:
        """``3/10 done, 2 running, 1 retried, 4 pending, 0 failed``."""
        done = self.count("done")
        rest = ", ".join(f"{self.count(s)} {s}" for s in ("running", "retried", "pending", "failed"))
        return f"{done}/{len(self.state)} done, {rest}"


class CellBoard:
    """The grid display's mailbox for cells running elsewhere (a Ray actor in grid/ray_executor.py).

    Counts each cell's attempts (a second start is a retry) and queues starts and log lines until
    the display drains them. It lives here, free of heavy imports, so the actor's process starts
    at once instead of importing torch.
    """

    def __init__(self):
        self.attempts: dict[int, int] = {}
        self.events: list[tuple] = []

    def start(self, i: int, node: str) -> int:
        """Cell i starts on `node`; returns which attempt this is (1 for the first)."""
        self.attempts[i] = self.attempts.get(i, 0) + 1
        self.events.append(("start", i, self.attempts[i], node))
        return self.attempts[i]

    def log(self, i: int | None, line: str) -> None:
        self.events.append(("log", i, line))

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


class RichGridUI(NullUI):
    """One rich display for the whole grid: the cells' states on top, one row per running cell,
    the current stage bars below (local executor) and log lines above."""

    def __init__(self, console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.overall = self.progress.add_task("grid", total=total)
        self.cells = CellStates()
        self._rows: dict[str, int] = {}

    def log(self, msg: str) -> None:
        self.progress.console.print(msg, highlight=False, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, desc: str, total: int | None) -> Iterator:
        tid = self.progress.add_task(f"  {desc}", total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                self.progress.update(tid, total=total)
            self.progress.advance(tid, n)

        try:
            yield advance
        finally:
            self.progress.remove_task(tid)

    def state(self, cid: str, state: str, note: str = "") -> None:
        """Show a cell's new state: counts on the top row, a row while it runs, a log line when
        it is retried or fails."""
        if not self.cells.set(cid, state):
            return
        if state in ("retried", "failed"):
            self.log(f"[grid] {cid}: {state}" + (f" ({note})" if note else ""))
        row = self._rows.pop(cid, None)
        if row is not None:
            self.progress.remove_task(row)
        if state in ("running", "retried"):
            label = "retried" if state == "retried" else "running"
            self._rows[cid] = self.progress.add_task(f"  {label}: {cid}" + (f" ({note})" if note else ""),
                                                     total=None)
        finished = self.cells.count("done") + self.cells.count("failed")
        self.progress.update(self.overall, completed=finished, description=f"grid: {self.cells.line()}")

    def display(self):
        """The live display, shown while the grid runs."""
        return self.progress


class PlainGridUI(NullUI):
    """The grid on a plain log: one line per cell state change."""

    def __init__(self, ui):
        self.ui = ui
        self.cells = CellStates()

    def log(self, msg: str) -> None:
        self.ui.log(msg)

    def task(self, desc: str, total: int | None):
        return self.ui.task(desc, total)

    def state(self, cid: str, state: str, note: str = "") -> None:
        first = cid not in self.cells.state
        if self.cells.set(cid, state) and not (first and state == "pending"):  # not the initial listing
            self.ui.log(f"[grid] {cid}: {state}" + (f" ({note})" if note else ""))

    def display(self):
        return contextlib.nullcontext()


def grid_ui(ui, total: int):
    """The grid display for a run UI: one rich display when `ui` is rich, its plain log otherwise."""
    return RichGridUI(ui.console, total) if hasattr(ui, "console") else PlainGridUI(ui)

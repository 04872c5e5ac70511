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


class RichGridUI(NullUI):
    """One rich display for the whole grid: a cells-done bar on top, the current stage below."""

    def __init__(self, console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.overall = self.progress.add_task("grid", total=total)

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

    def cell(self, i: int, total: int, cid: str) -> None:
        self.progress.update(self.overall, completed=i, description=f"grid: cells done (next: {cid})")

    def display(self):
        """The live display, shown while the grid runs."""
        return self.progress


class PlainGridUI(NullUI):
    def __init__(self, ui):
        self.ui = ui

    def log(self, msg: str) -> None:
        self.ui.log(msg)

    def task(self, desc: str, total: int | None):
        return self.ui.task(desc, total)

    def cell(self, i: int, total: int, cid: str) -> None:
        pass

    def display(self):
        return contextlib.nullcontext()


def grid_ui(ui, total: int):
    """The grid display for a run UI: one rich display when `ui` is rich, its plain log otherwise."""
    return RichGridUI(ui.console, total) if hasattr(ui, "console") else PlainGridUI(ui)

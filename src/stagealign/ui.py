"""Progress and log output: rich in the terminal, silent in library use."""

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

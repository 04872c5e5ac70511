"""Judgments kept on disk, so nothing is judged twice: not in the next iteration, not after a kill.

PairRM re-judging the static pool every iteration, or a resumed run paying an LLM endpoint again
for comparisons it already bought, is pure waste: a judgment is a fixed function of (judge,
prompt, answer a, answer b) (a score of (judge, prompt, answer)). `StoredJudge` wraps a judge and
answers what it has seen from a SQLite file (atomic commits, so a kill loses at most the call in
flight), and asks the judge only for the rest.

Multi-process runs: the file is read once when the judge is wrapped, into memory, on every rank;
every rank then sees the same results (the wrapped judge gathers them) and updates its memory the
same way, so all ranks always agree on what is missing; only the main process writes the file.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

from stagealign.judges.base import Judge


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class JudgmentStore:
    """A key -> float table in SQLite; `writer=False` reads only (the non-main ranks)."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer

    def load(self) -> dict[str, float]:
        if not self.path.is_file():
            return {}
        with sqlite3.connect(self.path) as db:
            return dict(db.execute("SELECT key, value FROM judgments"))

    def add(self, items: dict[str, float]) -> None:
        if not self.writer or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as db:  # one transaction: all of the call's judgments or none
            db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, value REAL NOT NULL)")
            db.executemany("INSERT OR REPLACE INTO judgments VALUES (?, ?)", items.items())


class StoredJudge(Judge):
    """`inner` with its judgments remembered in `store` across iterations and runs of one directory.

    `calls` counts the judgments actually asked of `inner` (what a resumed run did not pay again).
    """

    def __init__(self, inner: Judge, store: JudgmentStore):
        self.inner, self.store = inner, store
        self.name = inner.name
        self.pairwise_only = inner.pairwise_only
        self.temperature = inner.temperature
        self._known = store.load()
        self.calls = 0

    def _lookup(self, keys: list[str], compute, columns: list[list[str]]) -> np.ndarray:
        """Values for `keys`; the unknown ones (each once) computed by `compute` over their rows."""
        todo: dict[str, int] = {}  # unknown key -> its first row
        for i, k in enumerate(keys):
            if k not in self._known and k not in todo:
                todo[k] = i
        if todo:
            rows = list(todo.values())
            values = np.asarray(compute(*([c[i] for i in rows] for c in columns)), dtype=np.float64)
            fresh = dict(zip(todo, values.tolist()))
            self.calls += len(fresh)
            self._known.update(fresh)
            self.store.add(fresh)
        return np.array([self._known[k] for k in keys], dtype=np.float64)

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        keys = [_key("score", self.name, p, a) for p, a in zip(prompts, answers)]
        return self._lookup(keys, self.inner.score, [prompts, answers])

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        if not self.pairwise_only:  # a scalar judge compares through its (stored) scores
            return super()._prob(prompts, a, b)
        keys = [_key("prob", self.name, p, x, y) for p, x, y in zip(prompts, a, b)]
        return self._lookup(keys, self.inner.prob, [prompts, a, b])

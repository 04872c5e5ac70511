"""The judge contract: everything that labels preferences goes through it.

A judge answers two questions: a scalar score per (prompt, answer) when it has one, and the
pairwise probability P(a > b). Scalar judges get the pairwise form for free through the
Bradley-Terry link P(a > b) = sigmoid((s_a - s_b) / temperature), so the boundary score and
pair building can treat reward models and pairwise rankers (PairRM) alike.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

import numpy as np


class JudgeError(ValueError):
    """A judge failed or returned something unusable (not numbers, wrong length, NaN, infinity)."""


def _checked(values: np.ndarray, n: int, what: str, judge: str) -> np.ndarray:
    try:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise JudgeError(f"judge {judge!r} returned {what} that are not numbers ({exc})") from None
    if values.shape[0] != n:
        raise JudgeError(f"judge {judge!r} returned {values.shape[0]} {what} for {n} inputs")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise JudgeError(f"judge {judge!r} returned a non-finite {what[:-1]} ({values[i]}) at input {i}")
    return values


class Judge(ABC):
    """Base class. Subclasses implement `_score` (scalar) and/or override `_prob` (pairwise)."""

    name: str = "judge"
    #: True when only pairwise comparisons are available (PairRM-like rankers).
    pairwise_only: bool = False
    #: Bradley-Terry temperature used to turn score differences into probabilities.
    temperature: float = 1.0

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if self.pairwise_only:
            raise NotImplementedError(f"judge {self.name!r} is pairwise only; use prob()")
        return _checked(self._score(list(prompts), list(answers)), len(answers), "scores", self.name)

    def prob(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_i > b_i | prompt_i) for each i."""
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        p = _checked(self._prob(list(prompts), list(a), list(b)), len(a), "probabilities", self.name)
        return np.clip(p, 0.0, 1.0)

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        sa = self.score(prompts, a)
        sb = self.score(prompts, b)
        return bradley_terry(sa, sb, self.temperature)


def bradley_terry(sa: np.ndarray, sb: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = (np.asarray(sa, dtype=np.float64) - np.asarray(sb, dtype=np.float64)) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # numerically stable sigmoid


class CallableJudge(Judge):
    """Wraps any Python function `f(prompts, answers) -> scores` as a scalar judge."""

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str | None = None,
                 temperature: float = 1.0):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.temperature = temperature

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        try:
            out = self.fn(prompts, answers)
        except Exception as exc:  # the user's function: name it and what it raised (--debug shows where)
            raise JudgeError(f"judge {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(out, Iterator):  # a generator of scores
            out = list(out)
        return out  # checked (numbers, length, finite) by Judge.score


class PairwiseCallableJudge(Judge):
    """Wraps any Python function `f(prompts, a, b) -> P(a > b)` as a pairwise-only judge (a custom
    ranker or a service that only compares two answers)."""

    pairwise_only = True

    def __init__(self, fn: Callable[[list[str], list[str], list[str]], Sequence[float]], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "pairwise_callable")

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        try:
            out = self.fn(prompts, a, b)
        except Exception as exc:  # the user's function: name it and what it raised (--debug shows where)
            raise JudgeError(f"judge {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        return list(out) if isinstance(out, Iterator) else out  # checked by Judge.prob


def load_callable(spec: str) -> Callable:
    """Resolve 'package.module:function' to the function, with a clear error otherwise."""
    if ":" not in spec:
        raise ValueError(f"judge callable {spec!r} must look like 'package.module:function'")
    mod_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"judge callable {spec!r}: cannot import module {mod_name!r} ({exc})") from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"judge callable {spec!r}: module {mod_name!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"judge callable {spec!r} is not callable")
    return fn


class CachedJudge(Judge):
    """Memoises scalar scores by (prompt, answer).

    A static answer is scored once and reused by the boundary score, pair building and every
    later iteration; pairwise-only judges pass through uncached (their answers pair up anew).
    """

    def __init__(self, inner: Judge):
        self.inner = inner
        self.name = inner.name
        self.pairwise_only = inner.pairwise_only
        self.temperature = inner.temperature
        self._cache: dict[tuple[str, str], float] = {}
        self.calls = 0  # judge evaluations actually run (cache misses / comparisons)

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        keys = list(zip(prompts, answers))
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            values = self.inner.score([k[0] for k in missing], [k[1] for k in missing])
            self._cache.update(zip(missing, values.tolist()))
            self.calls += len(missing)
        return np.array([self._cache[k] for k in keys], dtype=np.float64)

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        if self.pairwise_only:
            self.calls += len(a)
            return self.inner.prob(prompts, a, b)
        return super()._prob(prompts, a, b)

"""Interval estimates behind the boundary score and the experiment reports.

The boundary score is a share of on-policy-vs-static comparisons won by the policy. The
comparisons are *not* independent: every comparison for one probe prompt shares that prompt's
difficulty, its on-policy answers and its static answers. Treating the ``M x K`` votes of a
prompt as ``M x K`` independent coin flips makes the interval far too narrow and the stage decision
overconfident, so everything here that touches votes is clustered by prompt
(:func:`cluster_mean`). Votes that really are independent (one vote per prompt) can use the
binomial :func:`wilson_interval` / :func:`proportion_ci`.

Experiment reports aggregate over a handful of seeds, where normal quantiles are too optimistic, so
:func:`mean_ci` and :func:`diff_ci` use Student-t quantiles, and :func:`ratio_ci` (the paper's
on/off "effectiveness ratio") is bootstrapped because a ratio of means has no simple closed form and blows
up when its denominator is near zero.

Pure numpy (plus ``scipy.stats.t`` for the t quantile, imported lazily).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

__all__ = [
    "Estimate",
    "Decision",
    "wilson_interval",
    "proportion_ci",
    "cluster_mean",
    "decide",
    "interim_level",
    "should_stop",
    "SequentialProbe",
    "mean_ci",
    "diff_ci",
    "ratio_ci",
]

Decision = Literal["injection", "fine-tuning", "uncertain"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval, carrying enough context to be re-read later.

    ``n_clusters`` is the number of independent units the interval rests on (prompts for the
    boundary score, seeds for experiment summaries); ``n_obs`` the number of raw observations.
    Keeping both makes it visible when many observations rest on few independent units.
    Non-finite bounds are legitimate: they mean "the data cannot bound this" (one seed, one
    cluster, a ratio whose denominator may be zero), and are kept rather than hidden.
    """

    mean: float
    lo: float
    hi: float
    se: float
    n_clusters: int
    n_obs: int
    level: float
    method: str = ""

    def contains(self, x: float) -> bool:
        """True when ``x`` lies in the closed interval; a NaN bound contains nothing."""
        return bool(self.lo <= x <= self.hi)

    @property
    def width(self) -> float:
        return float(self.hi - self.lo)

    def to_dict(self, json_safe: bool = False) -> dict[str, Any]:
        """Plain dict for metrics files.

        With ``json_safe=True`` non-finite floats become ``None``, because strict JSON readers
        (other languages, pandas with ``orient`` defaults) reject ``NaN``/``Infinity``.
        """
        d = asdict(self)
        if json_safe:
            for k, v in d.items():
                if isinstance(v, float) and not math.isfinite(v):
                    d[k] = None
        return d


# ----------------------------------------------------------------------------- helpers


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return level


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + _check_level(level) / 2.0)


def _t(level: float, df: int) -> float:
    from scipy.stats import t as student_t  # lazy: only the seed-level summaries need scipy

    return float(student_t.ppf(0.5 + _check_level(level) / 2.0, df))


def _rng(rng: int | np.random.Generator | None) -> np.random.Generator:
    # None means seed 0, not OS entropy: the same data must give the same interval on every run.
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _as_1d(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


# ----------------------------------------------------------------------------- binomial


def wilson_interval(successes: float, n: int, level: float = 0.95) -> Estimate:
    """Binomial interval for independent votes.

    Wilson rather than Wald because the boundary score is often far from 0.5 with few probes,
    where the Wald interval undercovers and can collapse to a point at 0 or 1. ``successes`` may
    be fractional (ties counted as 1/2); the interval is then approximate. ``mean`` is the raw
    share, ``se`` its binomial standard error sqrt(p(1-p)/n).
    """
    n = int(n)
    successes = float(successes)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = _z(level)
    if n == 0:
        return Estimate(math.nan, 0.0, 1.0, math.inf, 0, 0, level, "wilson")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the edges: with no successes (or no failures) the bound *is* 0 (or 1), not 1e-17
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, lo, hi, math.sqrt(p * (1 - p) / n), n, n, level, "wilson")


def proportion_ci(successes: Any, level: float = 0.95) -> Estimate:
    """Wilson interval from a 0/1 array of independent outcomes (e.g. one hard vote per prompt)."""
    arr = _as_1d(successes, "successes")
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[(arr != 0) & (arr != 1)][0]
        raise ValueError(
            f"proportion_ci expects 0/1 outcomes, got {bad}; "
            "use cluster_mean for soft or tied votes"
        )
    return wilson_interval(float(arr.sum()), arr.size, level)


# ----------------------------------------------------------------------------- clustered


def _clusters(values_per_cluster: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and sizes. A 2-D array is clusters x observations; a 1-D array means one
    observation per cluster (the iid case). Empty clusters carry no information and are dropped."""
    if isinstance(values_per_cluster, np.ndarray):
        arr = np.asarray(values_per_cluster, dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None]
        elif arr.ndim != 2:
            raise ValueError(f"expected a 1-D or 2-D array of votes, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("votes contain NaN or infinite values")
        sums = arr.sum(axis=1)
        sizes = np.full(arr.shape[0], arr.shape[1], dtype=float)
    else:
        sums_l, sizes_l = [], []
        for i, c in enumerate(values_per_cluster):
            a = np.asarray(c, dtype=float).ravel()
            if not np.all(np.isfinite(a)):
                raise ValueError(f"cluster {i} contains NaN or infinite values")
            sums_l.append(a.sum())
            sizes_l.append(a.size)
        sums, sizes = np.asarray(sums_l, dtype=float), np.asarray(sizes_l, dtype=float)
    keep = sizes > 0
    return sums[keep], sizes[keep]


def cluster_mean(
    values_per_cluster: Sequence[Any] | np.ndarray,
    level: float = 0.95,
    method: Literal["normal", "bootstrap"] = "normal",
    n_boot: int = 2000,
    rng: int | np.random.Generator | None = None,
    bounded: bool = True,
) -> Estimate:
    """Mean of all observations with an interval that respects within-cluster correlation.

    The estimate is the pooled share sum(votes) / n(votes) (a ratio estimator, so prompts with
    more comparisons weigh more, exactly as "share of all comparisons won" is defined). Its
    standard error treats *clusters* (prompts), not votes, as the independent units:

        se^2 = G/(G-1) * sum_g (S_g - mean * n_g)^2 / N^2      (CR1 sandwich)

    With one vote per cluster this reduces to the iid binomial se times sqrt(G/(G-1)); with M
    identical votes per cluster it is ~sqrt(M) times the naive se, which is the point.

    ``method="normal"`` gives mean +/- z*se; ``"bootstrap"`` resamples whole clusters and takes
    the percentile interval (better when G is small or the mean is near 0/1). ``bounded=True``
    (observations are probabilities / votes in [0, 1]) clips the interval to [0, 1].

    With a single cluster the between-cluster spread is unknowable: the interval is vacuous
    ((0, 1) if bounded, else (-inf, inf)) and se is 0.5 if bounded (the largest standard deviation
    any [0, 1]-valued quantity can have, so still a valid bound) else inf.

    Caveat: when every cluster has the same mean (e.g. the policy won all comparisons on the
    first 10 prompts) the normal se is 0 and the interval collapses to a point. That is why
    sequential stopping (:func:`should_stop`) insists on a minimum number of clusters.
    """
    level = _check_level(level)
    if method not in ("normal", "bootstrap"):
        raise ValueError(f"method must be 'normal' or 'bootstrap', got {method!r}")
    sums, sizes = _clusters(values_per_cluster)
    G, N = int(sums.size), float(sizes.sum())
    if G == 0:
        raise ValueError("cluster_mean needs at least one observation")
    mean = float(sums.sum() / N)
    if G == 1:
        lo, hi, se = (0.0, 1.0, 0.5) if bounded else (-math.inf, math.inf, math.inf)
        return Estimate(mean, lo, hi, se, 1, int(N), level, method)

    if method == "normal":
        resid = sums - mean * sizes
        se = math.sqrt(G / (G - 1) * float(np.sum(resid * resid)) / (N * N))
        z = _z(level)
        lo, hi = mean - z * se, mean + z * se
    else:
        if n_boot < 10:
            raise ValueError(f"n_boot must be >= 10, got {n_boot}")
        gen = _rng(rng)
        boot = np.empty(n_boot)
        # Chunk the index draws so memory stays ~O(chunk * G) even for thousands of prompts.
        chunk = max(1, min(n_boot, 4_000_000 // G))
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            idx = gen.integers(0, G, size=(stop - start, G))
            boot[start:stop] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
        alpha = 1.0 - level
        lo, hi = (float(q) for q in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
        se = float(boot.std(ddof=1))
    if bounded:
        lo, hi = max(0.0, lo), min(1.0, hi)
    return Estimate(mean, float(lo), float(hi), float(se), G, int(N), level, method)


# ----------------------------------------------------------------------------- decisions


def decide(est: Estimate, threshold: float = 0.5) -> Decision:
    """Stage call from an interval, not from the point estimate.

    A boundary score of 0.52 +/- 0.05 says nothing about the stage; calling it "fine-tuning"
    would flip the data source on noise. So the call is only made when the whole interval lies on
    one side of the threshold; otherwise "uncertain" (the schedule then keeps its previous choice
    or blends). An interval with a NaN bound is "uncertain".
    """
    if est.hi < threshold:
        return "injection"
    if est.lo > threshold:
        return "fine-tuning"
    return "uncertain"


def interim_level(level: float, n_looks: int) -> float:
    """Per-look confidence level so that ``n_looks`` planned looks keep overall error <= 1-level.

    Peeking at a 95% interval after every batch and stopping the first time it excludes the
    threshold declares a stage far more often than 5% of the time when the policy sits exactly on
    the boundary (each look is another chance for noise to cross). Bonferroni splits the error
    budget evenly over the planned looks: alpha_look = (1 - level) / n_looks. It is conservative
    (group-sequential boundaries such as O'Brien-Fleming are tighter) but needs no assumptions
    about the correlation between looks.
    """
    level = _check_level(level)
    n_looks = int(n_looks)
    if n_looks < 1:
        raise ValueError(f"n_looks must be >= 1, got {n_looks}")
    return 1.0 - (1.0 - level) / n_looks


def should_stop(
    est: Estimate,
    threshold: float = 0.5,
    n_clusters: int | None = None,
    min_clusters: int = 20,
    max_clusters: int | None = None,
) -> bool:
    """Whether a sequential boundary probe can stop sampling prompts.

    Stops once the interval excludes the threshold (the stage is settled, further probes are
    wasted cost) provided at least ``min_clusters`` prompts were seen (guards against the
    degenerate zero-variance interval of a handful of prompts), or once ``max_clusters`` is
    reached (the model sits on the boundary; more probes will not settle it cheaply).

    ``est`` should be computed at an :func:`interim_level`, not the nominal level, or the
    repeated looks inflate the type-I error. ``n_clusters`` defaults to ``est.n_clusters``.
    """
    n = est.n_clusters if n_clusters is None else int(n_clusters)
    if max_clusters is not None and n >= max_clusters:
        return True
    if n < min_clusters:
        return False
    return decide(est, threshold) != "uncertain"


class SequentialProbe:
    """Accumulates per-prompt votes batch by batch and says when to stop.

    Each :meth:`add` is one look. The interval used for stopping is at
    ``interim_level(level, n_looks)`` where ``n_looks = ceil(max_clusters / batch_size)`` is the
    planned number of looks, so the stopping rule keeps its nominal error rate; the reported
    :attr:`estimate` is that (wider) interval, since it is the one that justified the decision.
    Adding batches smaller than ``batch_size`` means more looks than planned and weakens the
    guarantee.
    """

    def __init__(
        self,
        max_clusters: int,
        batch_size: int,
        threshold: float = 0.5,
        level: float = 0.95,
        min_clusters: int | None = None,
        method: Literal["normal", "bootstrap"] = "normal",
        bounded: bool = True,
        n_boot: int = 2000,
        rng: int | np.random.Generator | None = None,
    ) -> None:
        if batch_size < 1 or max_clusters < 1:
            raise ValueError("batch_size and max_clusters must be >= 1")
        self.max_clusters = int(max_clusters)
        self.batch_size = int(batch_size)
        self.threshold = float(threshold)
        self.level = _check_level(level)
        self.min_clusters = self.batch_size if min_clusters is None else int(min_clusters)
        self.method = method
        self.bounded = bounded
        self.n_boot = n_boot
        self._rng = _rng(rng)
        self.n_looks = max(1, math.ceil(self.max_clusters / self.batch_size))
        self.look_level = interim_level(self.level, self.n_looks)
        self.looks = 0
        self._clusters: list[np.ndarray] = []
        self.estimate: Estimate | None = None

    @property
    def n_clusters(self) -> int:
        return len(self._clusters)

    def add(self, values_per_cluster: Sequence[Any] | np.ndarray) -> Estimate:
        """Add one batch of prompts (each an array of votes); re-estimate at the interim level."""
        if isinstance(values_per_cluster, np.ndarray) and values_per_cluster.ndim == 1:
            values_per_cluster = values_per_cluster[:, None]
        for c in values_per_cluster:
            a = np.asarray(c, dtype=float).ravel()
            if a.size:
                self._clusters.append(a)
        self.looks += 1
        self.estimate = cluster_mean(
            self._clusters, self.look_level, self.method, self.n_boot, self._rng, self.bounded
        )
        return self.estimate

    @property
    def done(self) -> bool:
        if self.estimate is None:
            return False
        return should_stop(
            self.estimate, self.threshold, self.n_clusters, self.min_clusters, self.max_clusters
        )

    def decision(self) -> Decision:
        return "uncertain" if self.estimate is None else decide(self.estimate, self.threshold)


# ----------------------------------------------------------------------------- over seeds


def mean_ci(values: Any, level: float = 0.95) -> Estimate:
    """Mean over seeds with a Student-t interval (normal quantiles are too narrow for 3-5 seeds).

    One seed gives an infinite interval and infinite se: a single run says nothing about
    seed-to-seed spread, and a report should show that rather than crash or show zero width.
    """
    arr = _as_1d(values, "values")
    n = arr.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    m = float(arr.mean())
    if n == 1:
        return Estimate(m, -math.inf, math.inf, math.inf, 1, 1, _check_level(level), "t")
    se = float(arr.std(ddof=1) / math.sqrt(n))
    q = _t(level, n - 1)
    return Estimate(m, m - q * se, m + q * se, se, n, n, level, "t")


def _paired(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_1d(a, names[0]), _as_1d(b, names[1])
    if x.size != y.size:
        raise ValueError(
            f"{names[0]} and {names[1]} must be paired by seed (same length), "
            f"got {x.size} and {y.size}"
        )
    if x.size == 0:
        raise ValueError("need at least one seed")
    return x, y


def diff_ci(a: Any, b: Any, level: float = 0.95) -> Estimate:
    """Paired difference a - b over seeds with a t interval.

    Report this next to :func:`ratio_ci`: it stays well defined when the static gain is ~0 or
    negative, and pairing by seed removes the seed effect shared by both arms.
    """
    x, y = _paired(a, b, ("a", "b"))
    return mean_ci(x - y, level)


def ratio_ci(
    numer: Any,
    denom: Any,
    level: float = 0.95,
    n_boot: int = 2000,
    rng: int | np.random.Generator | None = None,
) -> Estimate:
    """Ratio of mean gains, mean(numer) / mean(denom), with a paired percentile bootstrap.

    This is the paper's effectiveness ratio (on-policy gain / static gain: ~3x for Llama-3,
    ~0.4x for Zephyr). Seeds are resampled as pairs so the correlation between the two arms is kept.

    A ratio is only meaningful when the denominator is clearly non-zero. Rules, chosen to be
    honest rather than pretty (cf. Fieller: a ratio's confidence set is unbounded when the
    denominator's is not bounded away from zero):

    * mean(denom) == 0: the point estimate is +/-inf (or NaN for 0/0) and the interval is
      (-inf, inf).
    * the bootstrap interval of mean(denom) contains 0: the interval is (-inf, inf); the point
      estimate is still reported.
    * a negative denominator (static training *hurt*) gives a valid number whose sign no longer
      means "on-policy is better/worse"; read it with :func:`diff_ci`.
    * a single seed: interval (-inf, inf), se inf.

    ``se`` is the standard deviation of the finite bootstrap ratios, or inf when unbounded.
    """
    level = _check_level(level)
    x, y = _paired(numer, denom, ("numer", "denom"))
    n = x.size
    mx, my = float(x.mean()), float(y.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(np.divide(mx, my))
    unbounded = Estimate(point, -math.inf, math.inf, math.inf, n, n, level, "bootstrap")
    if n == 1 or my == 0.0:
        return unbounded
    gen = _rng(rng)
    idx = gen.integers(0, n, size=(int(n_boot), n))
    bx, by = x[idx].mean(axis=1), y[idx].mean(axis=1)
    alpha = 1.0 - level
    dlo, dhi = np.quantile(by, [alpha / 2, 1 - alpha / 2])
    if dlo <= 0.0 <= dhi:
        return unbounded
    with np.errstate(divide="ignore", invalid="ignore"):
        br = bx / by
    finite = br[np.isfinite(br)]
    lo, hi = (float(q) for q in np.nanquantile(br, [alpha / 2, 1 - alpha / 2]))
    se = float(finite.std(ddof=1)) if finite.size > 1 else math.inf
    return Estimate(point, lo, hi, se, n, n, level, "bootstrap")

"""Interval math behind the boundary score and the experiment reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from stagealign.stats import (
    Estimate,
    SequentialProbe,
    cluster_mean,
    decide,
    diff_ci,
    interim_level,
    mean_ci,
    proportion_ci,
    ratio_ci,
    should_stop,
    wilson_interval,
)


def _est(lo: float, hi: float, n: int = 100) -> Estimate:
    return Estimate((lo + hi) / 2, lo, hi, (hi - lo) / 4, n, n, 0.95)


# ----------------------------------------------------------------------------- binomial


def test_wilson_matches_textbook_30_of_100():
    est = wilson_interval(30, 100)
    assert est.mean == pytest.approx(0.30)
    assert est.lo == pytest.approx(0.2189, abs=5e-4)
    assert est.hi == pytest.approx(0.3958, abs=5e-4)
    assert est.se == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
    assert est.contains(0.3) and not est.contains(0.5)


def test_wilson_extremes_stay_in_unit_interval_and_are_not_degenerate():
    zero = wilson_interval(0, 10)
    assert zero.lo == 0.0 and 0.2 < zero.hi < 0.35  # Wald would give [0, 0]
    full = wilson_interval(10, 10)
    assert full.hi == 1.0 and 0.65 < full.lo < 0.8
    empty = wilson_interval(0, 0)
    assert (empty.lo, empty.hi) == (0.0, 1.0) and math.isnan(empty.mean)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(1, 10, level=1.5)


def test_proportion_ci_is_wilson_and_rejects_soft_votes():
    votes = np.array([1] * 30 + [0] * 70)
    assert proportion_ci(votes) == wilson_interval(30, 100)
    with pytest.raises(ValueError, match="0/1"):
        proportion_ci([0, 0.5, 1])


# ----------------------------------------------------------------------------- clustered


def test_cluster_mean_one_vote_per_cluster_is_binomial_se_times_cr1():
    rng = np.random.default_rng(1)
    n = 137
    votes = (rng.random(n) < 0.37).astype(float)
    p = votes.mean()
    expected = math.sqrt(p * (1 - p) / n) * math.sqrt(n / (n - 1))
    for data in (votes, votes[:, None], [np.array([v]) for v in votes]):
        est = cluster_mean(data)
        assert est.mean == pytest.approx(p, abs=1e-12)
        assert est.se == pytest.approx(expected, abs=1e-9)
        z = sps.norm.ppf(0.975)
        assert est.lo == pytest.approx(p - z * expected, abs=1e-9)
        assert est.hi == pytest.approx(p + z * expected, abs=1e-9)
        assert (est.n_clusters, est.n_obs) == (n, n)


def test_cluster_mean_is_pooled_ratio_over_unequal_cluster_sizes():
    clusters = [np.array([1.0, 1.0, 1.0, 0.0]), np.array([0.0]), np.array([0.5, 0.5])]
    est = cluster_mean(clusters, bounded=False)
    assert est.mean == pytest.approx(4.0 / 7.0)  # all votes pooled, not mean of cluster means
    sums, sizes, m = np.array([3.0, 0.0, 1.0]), np.array([4.0, 1.0, 2.0]), 4.0 / 7.0
    se = math.sqrt(3 / 2 * np.sum((sums - m * sizes) ** 2) / 49)
    assert est.se == pytest.approx(se, abs=1e-12)
    assert (est.n_clusters, est.n_obs) == (3, 7)


def test_clustered_interval_handles_perfectly_correlated_votes():
    """All M votes of a prompt identical: the naive iid interval is sqrt(M) too narrow."""
    rng = np.random.default_rng(2024)
    G, M, p, reps = 50, 8, 0.3, 400
    z = sps.norm.ppf(0.975)
    cover_cluster = cover_naive = 0
    ratios = []
    for _ in range(reps):
        per_prompt = (rng.random(G) < p).astype(float)
        votes = np.repeat(per_prompt[:, None], M, axis=1)
        est = cluster_mean(votes)
        phat = votes.mean()
        naive_se = math.sqrt(phat * (1 - phat) / votes.size)
        if 0 < phat < 1:
            ratios.append(est.se / naive_se)
        cover_cluster += est.contains(p)
        cover_naive += abs(phat - p) <= z * naive_se
    ratios = np.array(ratios)
    # exact identity under perfect correlation: sqrt(M) times the CR1 factor
    assert np.allclose(ratios, math.sqrt(M) * math.sqrt(G / (G - 1)), rtol=1e-9)
    assert ratios.mean() == pytest.approx(math.sqrt(M), rel=0.05)
    assert 0.90 <= cover_cluster / reps <= 0.99
    assert cover_naive / reps < 0.80


def test_bootstrap_and_normal_agree_on_large_sample():
    rng = np.random.default_rng(7)
    clusters = []
    for _ in range(400):
        q = rng.beta(2, 2)  # prompt-level difficulty makes votes within a prompt correlated
        clusters.append(rng.random(rng.integers(1, 7)) < q)
    normal = cluster_mean(clusters)
    boot = cluster_mean(clusters, method="bootstrap", n_boot=2000, rng=3)
    assert boot.mean == normal.mean
    assert boot.se == pytest.approx(normal.se, rel=0.10)
    assert boot.lo == pytest.approx(normal.lo, abs=0.01)
    assert boot.hi == pytest.approx(normal.hi, abs=0.01)
    # same seed, same interval; default rng is seeded too
    assert cluster_mean(clusters, method="bootstrap", rng=3) == cluster_mean(
        clusters, method="bootstrap", rng=3
    )
    assert cluster_mean(clusters, method="bootstrap") == cluster_mean(clusters, method="bootstrap")


def test_cluster_mean_edge_cases():
    one = cluster_mean([np.array([1.0, 0.0, 1.0])])
    assert (one.lo, one.hi, one.n_clusters) == (0.0, 1.0, 1)
    assert one.mean == pytest.approx(2 / 3) and math.isfinite(one.se)
    unb = cluster_mean([np.array([1.0, 0.0])], bounded=False)
    assert (unb.lo, unb.hi) == (-math.inf, math.inf)
    assert decide(unb) == "uncertain"
    # clipping only when bounded
    near_one = [np.array([1.0])] * 19 + [np.array([0.0])]
    assert cluster_mean(near_one).hi == 1.0
    assert cluster_mean(near_one, bounded=False).hi > 1.0
    # empty clusters are dropped, not counted
    assert cluster_mean([np.array([1.0]), np.array([]), np.array([0.0])]).n_clusters == 2
    with pytest.raises(ValueError):
        cluster_mean([])
    with pytest.raises(ValueError, match="NaN"):
        cluster_mean([np.array([1.0, np.nan]), np.array([0.0])])
    with pytest.raises(ValueError, match="method"):
        cluster_mean([np.array([1.0]), np.array([0.0])], method="wald")


def test_estimate_to_dict_round_trips_and_json_safe():
    est = mean_ci([0.4])
    d = est.to_dict()
    assert Estimate(**d) == est
    safe = est.to_dict(json_safe=True)
    assert safe["lo"] is None and safe["hi"] is None
    json.loads(json.dumps(safe, allow_nan=False))


# ----------------------------------------------------------------------------- decisions


def test_decide_all_branches():
    assert decide(_est(0.30, 0.45)) == "injection"
    assert decide(_est(0.55, 0.70)) == "fine-tuning"
    assert decide(_est(0.45, 0.55)) == "uncertain"
    assert decide(_est(0.40, 0.50)) == "uncertain"  # touching the threshold is not excluding it
    assert decide(_est(0.55, 0.70), threshold=0.6) == "uncertain"
    assert decide(_est(math.nan, math.nan)) == "uncertain"


def test_should_stop_far_vs_close_vs_cap():
    rng = np.random.default_rng(5)
    far = [rng.random(4) < 0.85 for _ in range(30)]
    close = [rng.random(4) < 0.5 for _ in range(30)]
    far_est, close_est = cluster_mean(far), cluster_mean(close)
    assert should_stop(far_est, 0.5, min_clusters=20, max_clusters=1000)
    assert not should_stop(close_est, 0.5, min_clusters=20, max_clusters=1000)
    # below min_clusters nothing stops, however far
    assert not should_stop(far_est, 0.5, n_clusters=10, min_clusters=20, max_clusters=1000)
    # the cap always stops
    assert should_stop(close_est, 0.5, min_clusters=20, max_clusters=30)


def test_interim_level_widens_interval():
    assert interim_level(0.95, 1) == pytest.approx(0.95)
    assert interim_level(0.95, 5) == pytest.approx(0.99)
    votes = [np.array([v]) for v in (np.arange(200) % 3 == 0)]
    nominal = cluster_mean(votes, level=0.95)
    interim = cluster_mean(votes, level=interim_level(0.95, 10))
    assert interim.lo < nominal.lo and interim.hi > nominal.hi
    assert interim.se == nominal.se
    with pytest.raises(ValueError):
        interim_level(0.95, 0)


def _false_call_rate(level_corrected: bool, reps: int = 250) -> float:
    """A policy exactly on the boundary: how often does sequential probing declare a stage?"""
    rng = np.random.default_rng(11)
    wrong = 0
    for _ in range(reps):
        probe = SequentialProbe(max_clusters=200, batch_size=20, threshold=0.5, min_clusters=20)
        if not level_corrected:
            probe.look_level = probe.level
        while not probe.done:
            probe.add((rng.random(20) < 0.5).astype(float))
        wrong += probe.decision() != "uncertain"
    return wrong / reps


def test_sequential_correction_controls_false_stage_calls():
    naive = _false_call_rate(level_corrected=False)
    corrected = _false_call_rate(level_corrected=True)
    assert naive > 0.10  # ten peeks at a 95% interval
    assert corrected <= 0.06


def test_sequential_probe_stops_early_far_from_boundary():
    rng = np.random.default_rng(3)
    probe = SequentialProbe(max_clusters=500, batch_size=25, threshold=0.5)
    assert probe.n_looks == 20 and probe.look_level == pytest.approx(1 - 0.05 / 20)
    while not probe.done:
        probe.add([rng.random(4) < 0.2 for _ in range(25)])
    assert probe.n_clusters < 100
    assert probe.decision() == "injection"
    assert probe.estimate is not None and probe.estimate.level == probe.look_level


# ----------------------------------------------------------------------------- over seeds


def test_mean_ci_matches_scipy_t_interval():
    x = np.array([0.12, 0.18, 0.15, 0.09, 0.21])
    est = mean_ci(x, level=0.9)
    lo, hi = sps.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert (est.lo, est.hi) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert est.se == pytest.approx(sps.sem(x))
    one = mean_ci([0.3])
    assert one.mean == 0.3 and (one.lo, one.hi) == (-math.inf, math.inf)
    with pytest.raises(ValueError):
        mean_ci([])


def test_diff_ci_is_paired():
    rng = np.random.default_rng(0)
    b = rng.normal(0, 5, size=6)  # large seed effect shared by both arms
    a = b + 1.0 + rng.normal(0, 0.05, size=6)
    d = diff_ci(a, b)
    assert d.contains(1.0) and d.width < 0.3
    assert d == mean_ci(a - b)
    with pytest.raises(ValueError, match="paired"):
        diff_ci([1, 2, 3], [1, 2])


def test_ratio_ci_recovers_known_ratio():
    rng = np.random.default_rng(1)
    off = rng.normal(0.10, 0.01, size=8)
    on = 3.0 * off + rng.normal(0, 0.003, size=8)
    est = ratio_ci(on, off, n_boot=2000, rng=0)
    assert est.mean == pytest.approx(on.mean() / off.mean())
    assert est.lo < 3.0 < est.hi and est.hi - est.lo < 0.3
    assert math.isfinite(est.se)
    assert ratio_ci(on, off, rng=0) == ratio_ci(on, off, rng=0)


def test_ratio_ci_is_honest_when_denominator_near_zero():
    on = np.array([0.10, 0.12, 0.11, 0.09])
    off = np.array([0.02, -0.03, 0.01, -0.01])  # static gain indistinguishable from zero
    est = ratio_ci(on, off, rng=0)
    assert (est.lo, est.hi) == (-math.inf, math.inf)
    assert decide(est, 1.0) == "uncertain"
    zero = ratio_ci([0.1, 0.2], [0.0, 0.0])
    assert math.isinf(zero.mean) and zero.lo == -math.inf
    single = ratio_ci([0.3], [0.1])
    assert single.mean == pytest.approx(3.0) and (single.lo, single.hi) == (-math.inf, math.inf)
    with pytest.raises(ValueError, match="paired"):
        ratio_ci([0.1, 0.2], [0.1])

"""Tests for candidate-set and preference-pair diagnostics."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from stagealign.data.diagnostics import (
    diagnose_pairs,
    diagnose_sets,
    distinct_n,
    edit_diversity,
    embedding_dispersion,
    levenshtein,
    mean_ci,
    ngram_diversity,
    ngram_overlap,
    normalized_edit_distance,
    quality,
)
from stagealign.data.schema import CandidateSet, PreferencePair


def bow_embed(texts: list[str]) -> np.ndarray:
    """Toy embedder: bag-of-words counts over the batch's vocabulary."""
    vocab = sorted({w for t in texts for w in t.split()})
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(texts), max(len(vocab), 1)))
    for r, t in enumerate(texts):
        for w in t.split():
            out[r, index[w]] += 1
    return out


def naive_levenshtein(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


IDENT = ["the quick brown fox jumps"] * 4
DISJOINT = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota", "kappa lambda mu"]


# ----------------------------------------------------------------------------- primitives


def test_identical_candidates_have_no_diversity():
    assert distinct_n(IDENT, 1) == pytest.approx(1 / 4)  # 5 distinct / 20 tokens
    assert distinct_n(IDENT, 2) == pytest.approx(1 / 4)
    assert ngram_overlap(IDENT) == pytest.approx(1.0)
    assert ngram_diversity(IDENT) == pytest.approx(0.0)
    assert edit_diversity(IDENT) == pytest.approx(0.0)


def test_disjoint_candidates_are_fully_diverse():
    assert distinct_n(DISJOINT, 1) == pytest.approx(1.0)
    assert distinct_n(DISJOINT, 2) == pytest.approx(1.0)
    assert ngram_overlap(DISJOINT) == pytest.approx(0.0)
    assert ngram_diversity(DISJOINT) == pytest.approx(1.0)
    assert ngram_overlap(DISJOINT, n=1) == pytest.approx(0.0)
    assert edit_diversity(DISJOINT) == pytest.approx(1.0)


def test_ngram_overlap_partial_by_hand():
    # bigrams {ab, bc, cd} vs {ab, bc, ce}: |∩| = 2, |∪| = 4
    assert ngram_overlap(["a b c d", "a b c e"]) == pytest.approx(0.5)
    # texts shorter than n fall back to their whole token sequence
    assert ngram_overlap(["yes", "no"]) == pytest.approx(0.0)
    assert ngram_overlap(["yes", "yes"]) == pytest.approx(1.0)
    assert math.isnan(ngram_overlap(["only one"]))


def test_distinct_n_counts_repeats_inside_a_text():
    # 1-grams: a a a b -> 2 distinct / 4; no bigrams in a 1-token text
    assert distinct_n(["a a a b"], 1) == pytest.approx(0.5)
    assert math.isnan(distinct_n(["a", "b"], 2))


def test_levenshtein_hand_computed():
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein(list("flaw"), list("lawn")) == 2
    assert levenshtein([], ["a", "b", "c"]) == 3
    assert levenshtein(["a"], []) == 1
    a = "the cat sat on the mat".split()
    b = "the cat sat on a mat".split()
    assert levenshtein(a, b) == 1  # one substitution
    assert normalized_edit_distance("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(1 / 6)
    # deletion of two tokens: distance 2, normalised by the longer (5)
    assert normalized_edit_distance("a b c d e", "a c e") == pytest.approx(2 / 5)
    assert normalized_edit_distance("", "") == 0.0


def test_levenshtein_matches_naive_dp():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        assert levenshtein(a, b) == naive_levenshtein(a, b), (a, b)


def test_edit_cap_truncates_long_answers():
    a = "x y " + " ".join(f"p{i}" for i in range(50))
    b = "x y " + " ".join(f"q{i}" for i in range(50))
    assert normalized_edit_distance(a, b, max_tokens=2) == 0.0
    assert normalized_edit_distance(a, b, max_tokens=None) == pytest.approx(50 / 52)
    assert edit_diversity([a, b], max_tokens=2) == 0.0


def test_custom_tokenizer():
    # character-level: "abc" vs "abd" differ in one of three characters
    assert edit_diversity(["abc", "abd"], tokenize=list) == pytest.approx(1 / 3)
    assert distinct_n(["aa"], 1, tokenize=list) == pytest.approx(0.5)


def test_embedding_dispersion_toy_embed():
    assert embedding_dispersion(["a b c", "a b c", "a b c"], bow_embed) == pytest.approx(0.0, abs=1e-12)
    assert embedding_dispersion(["a b", "a c"], bow_embed) > 0
    # orthogonal bag-of-words vectors: cosine distance 1
    assert embedding_dispersion(["a b", "c d"], bow_embed) == pytest.approx(1.0)
    assert math.isnan(embedding_dispersion(["a"], bow_embed))
    with pytest.raises(ValueError):
        embedding_dispersion(["a", "b"], lambda ts: np.zeros((3, 2)))


def test_quality():
    q = quality([1.0, 3.0])
    assert q == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "spread": 2.0}
    with pytest.raises(ValueError):
        quality([])


def test_mean_ci():
    r = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert r["n"] == 3 and r["mean"] == pytest.approx(2.0)
    half = 1.959963984540054 * 1.0 / math.sqrt(3)
    assert r["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert mean_ci([5.0])["ci95"] is None
    assert mean_ci([])["mean"] is None


# ----------------------------------------------------------------------------- diagnose_sets

MULTI = [
    ["the sky is blue because of rayleigh scattering",
     "sunlight scatters off air molecules and short wavelengths dominate",
     "blue light bends more in the atmosphere so we see it everywhere",
     "air scatters blue photons far more strongly than red ones"],
    ["paris is the capital of france",
     "the french capital is paris a city on the seine",
     "france has its seat of government in paris",
     "capital city paris"],
    ["water boils at one hundred degrees celsius at sea level",
     "at standard pressure the boiling point is 100 c",
     "it depends on altitude but usually 100 degrees",
     "boiling happens near 212 fahrenheit"],
]


def _near_dupes(base: str) -> list[str]:
    return [base, base + " indeed", base, "well " + base]


def _sets(groups, sources, origin="static", scores=None):
    return [
        CandidateSet(
            prompt_id=f"p{i}",
            prompt=f"question {i}",
            candidates=list(g),
            sources=list(sources[: len(g)]),
            origin=origin,
            scores=None if scores is None else list(scores[i]),
        )
        for i, g in enumerate(groups)
    ]


def test_multi_source_pool_more_diverse_than_near_duplicates_by_every_metric():
    multi = diagnose_sets(_sets(MULTI, ["m1", "m2", "m3", "m4"]), embed=bow_embed)
    single = diagnose_sets(
        _sets([_near_dupes(g[0]) for g in MULTI], ["big"] * 4), embed=bow_embed
    )
    higher = ["distinct_1", "distinct_2", "ngram_diversity", "edit_diversity", "embedding_dispersion"]
    for key in higher:
        assert multi[key]["mean"] > single[key]["mean"], key
        assert multi[key]["n"] == 3
    assert multi["ngram_overlap"]["mean"] < single["ngram_overlap"]["mean"]
    assert multi["sources"] == {"m1": 3, "m2": 3, "m3": 3, "m4": 3}
    assert single["sources"] == {"big": 12}
    assert multi["n_prompts"] == 3 and multi["mean_candidates"] == 4.0
    assert "embedding_dispersion" not in diagnose_sets(_sets(MULTI, ["m1"] * 4))


def test_single_candidate_sets_are_skipped_and_counted():
    sets = _sets([["a b c", "d e f"], ["only answer"], ["lonely"], ["x y", "x y"]], ["s", "t"])
    d = diagnose_sets(sets, embed=bow_embed)
    assert d["skipped_single"] == 2
    assert d["n_sets"] == 4 and d["n_prompts"] == 4 and d["n_candidates"] == 6
    assert d["mean_candidates"] == pytest.approx(1.5)
    assert d["mean_length"] == pytest.approx((3 + 3 + 2 + 1 + 2 + 2) / 6)
    for key in ["distinct_1", "ngram_diversity", "edit_diversity", "embedding_dispersion"]:
        assert d[key]["n"] == 2, key
    assert d["ngram_diversity"]["mean"] == pytest.approx(0.5)  # mean of 1 and 0
    assert "quality_mean" not in d and "n_scored" not in d


def test_quality_keys_only_with_scores():
    scores = [[1.0, 3.0, 5.0, 7.0], [0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0]]
    d = diagnose_sets(_sets(MULTI, ["m1", "m2", "m3", "m4"], scores=scores))
    assert d["n_scored"] == 3
    assert d["quality_mean"]["mean"] == pytest.approx((4.0 + 1.0 + 4.0) / 3)
    assert d["quality_spread"]["mean"] == pytest.approx((6.0 + 2.0 + 0.0) / 3)
    assert d["quality_max"]["mean"] == pytest.approx((7.0 + 2.0 + 4.0) / 3)
    assert d["quality_std"]["n"] == 3
    lo, hi = d["quality_mean"]["ci95"]
    assert lo < d["quality_mean"]["mean"] < hi


def test_diagnose_sets_accepts_rows_and_empty_input():
    rows = [s.to_row() for s in _sets(MULTI[:1], ["m1", "m2", "m3", "m4"])]
    d = diagnose_sets(rows)
    assert d["n_sets"] == 1 and d["edit_diversity"]["ci95"] is None
    empty = diagnose_sets([])
    assert empty["n_prompts"] == 0 and empty["edit_diversity"]["mean"] is None
    json.dumps(empty, allow_nan=False)


def test_diagnose_sets_is_json_serialisable():
    scores = [[1.0, 3.0, 5.0, 7.0], [0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0]]
    sets = _sets(MULTI, ["m1", "m2", "m3", "m4"], scores=scores) + _sets([["lone"]], ["s"])
    d = diagnose_sets(sets, embed=bow_embed)
    assert json.loads(json.dumps(d, allow_nan=False)) == d


# ----------------------------------------------------------------------------- diagnose_pairs


def _pairs():
    return [
        PreferencePair(prompt="q1", chosen="a b c d", rejected="a b", prompt_id="p1",
                       score_chosen=3.0, score_rejected=1.0, origin="static", iteration=0,
                       chosen_source="m1", rejected_source="m2"),
        PreferencePair(prompt="q2", chosen="x y", rejected="x z", prompt_id="p2",
                       score_chosen=2.0, score_rejected=1.5, origin="onpolicy", iteration=1,
                       chosen_source="policy@1", rejected_source="policy@1"),
        PreferencePair(prompt="q3", chosen="u", rejected="v w", prompt_id="p3",
                       score_chosen=1.0, score_rejected=0.5, origin="onpolicy", iteration=1,
                       chosen_source="policy@1", rejected_source="policy@1"),
    ]


def test_diagnose_pairs_hand_example():
    d = diagnose_pairs(_pairs())
    assert d["n_pairs"] == 3
    # edits: "a b c d"/"a b" 2/4; "x y"/"x z" 1/2; "u"/"v w" 2/2
    assert d["edit_distance"]["mean"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert d["margin"]["mean"] == pytest.approx((2.0 + 0.5 + 0.5) / 3)
    assert d["score_chosen"]["mean"] == pytest.approx(2.0)
    assert d["score_rejected"]["mean"] == pytest.approx(1.0)
    assert d["origin_share"] == pytest.approx({"static": 1 / 3, "onpolicy": 2 / 3})
    assert d["chosen_length"]["mean"] == pytest.approx(7 / 3)
    assert d["rejected_length"]["mean"] == pytest.approx(2.0)
    assert d["length_diff"]["mean"] == pytest.approx(1 / 3)
    assert d["chosen_longer_rate"] == pytest.approx(1 / 3)
    assert d["rejected_longer_rate"] == pytest.approx(1 / 3)
    assert d["chosen_sources"] == {"m1": 1, "policy@1": 2}
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_diagnose_pairs_accepts_dict_rows_and_plain_trl_rows():
    rows = [p.to_row() for p in _pairs()]
    assert diagnose_pairs(rows) == diagnose_pairs(_pairs())
    trl = [
        {"prompt": "q", "chosen": "a b c", "rejected": "a b"},
        {"prompt": [{"role": "user", "content": "q"}],
         "chosen": [{"role": "assistant", "content": "yes it is"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
    ]
    d = diagnose_pairs(trl)
    assert d["n_pairs"] == 2
    assert "margin" not in d and "score_chosen" not in d
    assert d["origin_share"]["unknown"] == pytest.approx(1.0)
    assert d["chosen_longer_rate"] == pytest.approx(1.0)
    assert d["edit_distance"]["mean"] == pytest.approx((1 / 3 + 3 / 3) / 2)
    json.dumps(d, allow_nan=False)
    assert diagnose_pairs([]) == {"n_pairs": 0}

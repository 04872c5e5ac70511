import numpy as np
import pytest

from stagealign.data.pairs import make_pairs, score_sets
from stagealign.data.schema import CandidateSet, PreferencePair
from stagealign.judges import CallableJudge, bradley_terry
from stagealign.judges.base import CachedJudge, Judge, JudgeError


def length_judge(prompts, answers):
    return [float(len(a.split())) for a in answers]


def sets():
    return [CandidateSet("p1", "x", ["a", "a b c", "a b"], ["m1", "m2", "m3"], "static"),
            CandidateSet("p2", "y", ["q r", "s t"], ["m1", "m2"], "onpolicy", iteration=2)]


def test_max_min_pairs_best_and_worst_with_provenance():
    s = sets()
    score_sets(s, CallableJudge(length_judge))
    pairs, dropped = make_pairs(s, iteration=2)
    assert len(pairs) == 1 and dropped["tie"] == 1  # p2's candidates tie
    p = pairs[0]
    assert (p.chosen, p.rejected, p.chosen_source, p.rejected_source) == ("a b c", "a", "m2", "m1")
    assert p.margin == 2.0 and p.origin == "static" and p.iteration == 2
    row = p.to_row()
    assert {"prompt", "chosen", "rejected"} <= set(row) and PreferencePair.from_row(row) == p


def test_max_random_and_min_margin():
    s = sets()
    score_sets(s, CallableJudge(length_judge))
    rejected = {make_pairs(s, rule="max-random", rng=np.random.default_rng(i))[0][0].rejected for i in range(20)}
    assert rejected == {"a", "a b"}
    pairs, dropped = make_pairs(s, min_margin=2.5)
    assert pairs == [] and dropped["below_margin"] == 1


class Pairwise(Judge):
    pairwise_only = True
    name = "pairwise"

    def _prob(self, prompts, a, b):
        return bradley_terry(np.array([len(x) for x in a]), np.array([len(x) for x in b]))


def test_pairwise_only_judge_ranks_by_mean_win_probability():
    s = sets()[:1]
    score_sets(s, Pairwise())
    assert np.argmax(s[0].scores) == 1 and np.argmin(s[0].scores) == 0
    with pytest.raises(NotImplementedError):
        Pairwise().score(["x"], ["a"])


def test_cached_judge_scores_each_answer_once():
    calls = []

    def f(prompts, answers):
        calls.extend(answers)
        return [1.0] * len(answers)

    j = CachedJudge(CallableJudge(f))
    j.score(["x", "x"], ["a", "b"])
    j.score(["x", "x"], ["a", "c"])
    assert calls == ["a", "b", "c"] and j.calls == 3


def test_bad_judge_output_is_named():
    with pytest.raises(JudgeError, match="non-finite"):
        CallableJudge(lambda p, a: [float("nan")] * len(a), name="bad").score(["x"], ["a"])
    with pytest.raises(JudgeError, match="returned 1 scores for 2"):
        CallableJudge(lambda p, a: [0.0], name="short").score(["x", "y"], ["a", "b"])


def test_candidate_set_validates_lengths():
    with pytest.raises(ValueError, match="2 candidates but 1 sources"):
        CandidateSet("p", "x", ["a", "b"], ["m"], "static")

"""What the boundary probe records for the decision rules other than BS (schedule.rule_decision):
soft and hard BS, the pool's own threshold, coverage; on a real tiny policy, with judges whose
probabilities the tests set."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from stagealign.boundary import BoundaryResult, measure, min_token_logprobs, pool_threshold
from stagealign.judges import CallableJudge
from stagealign.judges.base import PairwiseCallableJudge
from stagealign.logprobs import prompt_ids
from stagealign.policy import load_policy
from stagealign.providers import build_provider
from stagealign.schedule import rule_decision


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("rules") / "r", "policy.testbed=weak")
    prov = build_provider(cfg, log=lambda m: None)
    probe = [p for p in prov.probe if p.id in prov.pool][:16]
    return cfg.boundary.model_copy(update={"sequential": False}), cfg.generation, prov, probe, \
        load_policy(prov.initial_policy)


def _with(pool, probe, answers):
    """The pool of `probe` with each prompt's static answers replaced by `answers(prompt)`."""
    out = {}
    for p in probe:
        c = answers(p)
        out[p.id] = dataclasses.replace(pool[p.id], candidates=c, sources=[f"w{i}" for i in range(len(c))])
    return out


# ------------------------------------------------------------------------- (a) soft and hard BS

#: P(on-policy answer beats this static answer), by the static answer's word count
PROBS = (0.2, 0.5, 0.7, 0.9)


def _by_static(prompts, a, b):
    return [PROBS[len(y.split()) % 4] for y in b]


@pytest.mark.parametrize("votes", ["soft", "hard"])
def test_soft_and_hard_bs_come_from_the_same_probabilities(setup, votes):
    boundary, gen, prov, probe, policy = setup
    res = measure(policy, probe, prov.pool, PairwiseCallableJudge(_by_static), boundary.model_copy(
        update={"votes": votes}), gen, seed=0)
    p = np.array([PROBS[len(y.split()) % 4] for q in probe for y in prov.pool[q.id].candidates])
    hard = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
    assert res.bs_soft == pytest.approx(p.mean()) and res.bs_hard == pytest.approx(hard.mean())
    assert abs(res.bs_soft - res.bs_hard) > 0.01  # probabilities that are not 0/1 tell them apart
    assert res.bs_soft_lo <= res.bs_soft <= res.bs_soft_hi and res.bs_hard_lo <= res.bs_hard <= res.bs_hard_hi
    # bs keeps the configured votes
    assert res.bs == pytest.approx(res.bs_hard if votes == "hard" else res.bs_soft)


# ------------------------------------------------------------------------- (b) the pool's threshold


def _ranked(pool, probe):
    """A scalar judge ranking every prompt's static answers in a total order (their position in
    the pool), the policy's samples between the 3rd and the 4th."""
    rank = {(q.text, y): float(i) for q in probe for i, y in enumerate(pool[q.id].candidates)}
    return CallableJudge(lambda ps, xs: [rank.get((q, x), 2.5) for q, x in zip(ps, xs)], temperature=1e-6)


def test_pool_threshold_is_one_when_the_judge_ranks_the_static_answers(setup):
    boundary, gen, prov, probe, policy = setup
    pool = _with(prov.pool, probe, lambda q: [f"w{i} w{i + 1}" for i in range(4)])  # 4 distinct answers
    res = measure(policy, probe, pool, _ranked(pool, probe), boundary, gen, seed=0)
    assert res.pool_threshold == 1.0
    assert res.pool_comparisons == len(probe) * 4 * 3  # every ordered pair


def test_pool_threshold_is_one_half_when_the_judge_cannot_tell_answers_apart(setup):
    boundary, gen, prov, probe, policy = setup
    coin = PairwiseCallableJudge(lambda ps, a, b: [0.5] * len(a))
    res = measure(policy, probe, prov.pool, coin, boundary, gen, seed=0)
    assert res.pool_threshold == pytest.approx(0.5)
    assert res.top_share == 0.0  # a tie beats nothing


def test_pool_threshold_is_the_best_answers_win_rate():
    """"a" beats the others 9 times in 10, they tie with each other: a's win rate 0.9 (hard: 1),
    theirs (0.1 + 0.5) / 2; reading the pairs the wrong way round would give 0.7."""
    table = PairwiseCallableJudge(lambda ps, a, b: [0.9 if x == "a" else 0.1 if y == "a" else 0.5
                                                    for x, y in zip(a, b)])
    assert pool_threshold(table, ["x"], [["b", "a", "c"]], hard=False)[0] == pytest.approx(0.9)
    assert pool_threshold(table, ["x"], [["b", "a", "c"]], hard=True)[0] == 1.0


def test_pool_threshold_reads_both_orders_of_a_position_biased_judge():
    first = PairwiseCallableJudge(lambda ps, a, b: [0.8] * len(a))  # always prefers the answer shown first
    t, n = pool_threshold(first, ["x", "y", "z"], [["a", "b", "c"], ["d", "e"], ["f"]], hard=False)
    assert t == pytest.approx(0.5) and n == 3 * 2 + 2 * 1  # "z" has one static answer: left out
    assert pool_threshold(first, ["z"], [["f"]], hard=False) == (None, 0)


# ------------------------------------------------------------------------- (c) coverage


def _full_logprobs(policy, prompt, answer):
    """log p of every token of `answer` after `prompt`, from the plain logits (no fused head)."""
    ctx = prompt_ids(policy, prompt)
    ans = policy.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = policy.model(torch.tensor([ctx + ans])).logits[0].double().log_softmax(-1)
    return np.array([lp[len(ctx) + i - 1, t].item() for i, t in enumerate(ans)])


def test_min_token_logprobs_is_the_lowest_teacher_forced_token(setup):
    *_, probe, policy = setup
    answers = ["w18 w5 m7", "w3", "w40 w23 w7 w1 w2"]
    got = min_token_logprobs(policy, probe[:3], answers, batch_size=2)
    want = [_full_logprobs(policy, q, a).min() for q, a in zip(probe, answers)]
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.fixture(scope="module")
def rare(setup):
    """(common answer, the same with a token the policy hardly ever writes, an eps between them):
    the policy's two likeliest and its least likely word at the first answer position."""
    *_, probe, policy = setup
    tok = policy.tokenizer
    with torch.no_grad():
        p = policy.model(torch.tensor([prompt_ids(policy, probe[0])])).logits[0, -1].softmax(-1)
    words = [i for i in p.argsort().tolist() if i not in tok.all_special_ids]
    common = " ".join(tok.convert_ids_to_tokens(words[-2:]))
    odd = f"{common} {tok.convert_ids_to_tokens(words[0])}"
    lows = [np.exp(_full_logprobs(policy, q, a).min()) for q in probe for a in (common, odd)]
    eps = float(np.sqrt(max(lows[1::2]) * min(lows[0::2])))
    assert max(lows[1::2]) < eps < min(lows[0::2])  # on every probe prompt: only the odd word is below
    return common, odd, eps


def _prefers(pred):
    return CallableJudge(lambda ps, xs: [float(pred(x)) for x in xs], temperature=1e-6)


def test_a_preferred_static_answer_the_policy_cannot_write_makes_the_prompt_uncovered(setup, rare):
    boundary, gen, prov, probe, policy = setup
    common, odd, eps = rare
    pool = _with(prov.pool, probe, lambda q: [common, odd])
    cfg = boundary.model_copy(update={"coverage_eps": eps})
    res = measure(policy, probe, pool, _prefers(lambda x: x == odd), cfg, gen, seed=0)
    assert res.uncovered == 1.0 and res.top_share == 0.0 and res.coverage_eps == eps
    assert res.coverage_share == boundary.coverage_share
    # the same answers, but the policy can write every token of them: covered
    low = boundary.model_copy(update={"coverage_eps": eps / 100})
    assert measure(policy, probe, pool, _prefers(lambda x: x == odd), low, gen, seed=0).uncovered == 0.0
    # the judge prefers the policy's own samples: covered, whatever tokens the pool holds
    res = measure(policy, probe, pool, _prefers(lambda x: x not in (common, odd)), cfg, gen, seed=0)
    assert res.uncovered == 0.0 and res.top_share == 1.0


# ------------------------------------------------------------------------- (d) the rules read it back


def test_rules_decide_from_the_recorded_measurement(setup, rare):
    boundary, gen, prov, probe, policy = setup
    hard = boundary.model_copy(update={"votes": "hard"})
    pool = _with(prov.pool, probe, lambda q: [f"w{i} w{i + 1}" for i in range(4)])
    # the samples beat 3 of 4 static answers: BS = 3/4 says fine-tuning, but the pool's best answer
    # beats all the others, so what static pairs teach is still ahead of the policy
    res = measure(policy, probe, pool, _ranked(pool, probe), hard, gen, seed=0)
    d = json.loads(json.dumps({"measured": True, **res.to_dict()}))  # as the measure stage stores it
    assert d["bs"] == pytest.approx(0.75) and rule_decision("bs", d, 0.5)[0] == "fine-tuning"
    assert rule_decision("bs-pool", d, 0.5)[0] == "injection"
    assert rule_decision("bs-hard", d, 0.5)[0] == "fine-tuning"
    assert rule_decision("bs-hard", d, 0.8)[0] == "injection"
    common, odd, eps = rare
    cfg = boundary.model_copy(update={"coverage_eps": eps})
    pool = _with(prov.pool, probe, lambda q: [common, odd])
    for pred, want in ((lambda x: x == odd, "injection"), (lambda x: x not in (common, odd), "fine-tuning")):
        d = json.loads(json.dumps(measure(policy, probe, pool, _prefers(pred), cfg, gen, seed=0).to_dict()))
        assert rule_decision("coverage", d, 0.5)[0] == want


def test_a_result_recorded_before_the_rules_still_loads_and_names_what_it_lacks(setup):
    boundary, gen, prov, probe, policy = setup
    d = measure(policy, probe, prov.pool, prov.judge, boundary, gen, seed=0).to_dict()
    old = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(BoundaryResult)
                                               if f.default is dataclasses.MISSING} | {"per_prompt"}}
    back = BoundaryResult(**old).to_dict()
    assert back["bs"] == d["bs"] and back["pool_threshold"] is None
    with pytest.raises(ValueError, match="pool_threshold"):
        rule_decision("bs-pool", back, 0.5)

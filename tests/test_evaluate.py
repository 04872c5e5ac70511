"""Evaluation: win rates against the initial policy's answers and against references given with prompts."""

from __future__ import annotations

import pytest

import tiny_hf
from stagealign.config import EvalConfig, GenerationConfig
from stagealign.data.schema import Prompt
from stagealign.evaluate import evaluate
from stagealign.judges.base import CallableJudge
from stagealign.policy import load_policy


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(tiny_hf.save_policy_dir(tmp_path_factory.mktemp("sft")))


def _eval(policy, prompts, reference=None):
    metrics, answers = evaluate(policy, prompts, CallableJudge(tiny_hf.score), EvalConfig(samples=3, kl=False),
                                GenerationConfig(max_new_tokens=5, batch_size=8), seed=0, reference=reference)
    return metrics, answers


def test_win_rate_against_given_references_ranks_them(policy):
    best, worst = "w0 w1 w2", "w20 w21 w22"  # the judge's best and worst possible answers
    texts = [tiny_hf.prompt_text(i) for i in range(8)]
    vs_best, answers = _eval(policy, [Prompt(f"p{i}", t, reference=best) for i, t in enumerate(texts)])
    vs_worst, again = _eval(policy, [Prompt(f"p{i}", t, reference=worst) for i, t in enumerate(texts)])
    assert answers == again  # same seed, same answers: only the reference differs
    assert vs_best["win_rate_given_judge"]["mean"] <= 0.5 < vs_worst["win_rate_given_judge"]["mean"]
    assert vs_worst["win_rate_given_judge"]["lo"] <= vs_worst["win_rate_given_judge"]["mean"]
    assert "win_rate_judge" not in vs_best  # no initial-policy reference was given


def test_prompts_without_a_reference_are_left_out(policy):
    worst = "w20 w21 w22"
    texts = [tiny_hf.prompt_text(i) for i in range(6)]
    prompts = [Prompt(f"p{i}", t, reference=worst if i == 0 else None) for i, t in enumerate(texts)]
    metrics, answers = _eval(policy, prompts)
    judge = CallableJudge(tiny_hf.score)
    only_p0 = judge.prob([texts[0]] * 3, answers["p0"], [worst] * 3).mean()
    assert metrics["win_rate_given_judge"]["mean"] == pytest.approx(only_p0)
    # the initial policy's answers as reference (the pipeline's default) sit next to it
    both, _ = _eval(policy, prompts, reference={p.id: [worst] for p in prompts})
    assert both["win_rate_judge"]["mean"] != pytest.approx(both["win_rate_given_judge"]["mean"])

"""Evaluation: win rates against the initial policy's answers and against references given with
prompts; the KL to the initial policy on exactly the tokens sampled."""

from __future__ import annotations

import pytest
import torch

import tiny_hf
from stagealign.config import EvalConfig, GenerationConfig
from stagealign.data.schema import Prompt
from stagealign.evaluate import evaluate
from stagealign.generation import hf
from stagealign.judges.base import CallableJudge
from stagealign.policy import load_policy
from stagealign.seeds import batch_seed


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


def _sequence_logprob(model, sequence: torch.Tensor, start: int) -> float:
    """log p(sequence[start:] | sequence[:start]) from one plain forward pass."""
    with torch.no_grad():
        logp = model(sequence[None]).logits[0, :-1].float().log_softmax(-1)
    return float(logp.gather(-1, sequence[1:, None])[start - 1:].sum())


def test_kl_is_scored_on_exactly_the_sampled_tokens(policy, tmp_path):
    """KL(policy || initial) = mean over samples of log pi(y|x) - log pi_0(y|x), where log pi(y|x)
    is what generate() drew y with and y is the token sequence drawn: up to and including the end
    token the model stopped on, or its max_new_tokens tokens (no EOS added), special tokens the
    decoder drops included (a random tiny model draws <pad> and <unk>), no space inserted."""
    initial = load_policy(tiny_hf.save_policy_dir(tmp_path / "init", seed=1))
    prompt, n, steps, seed = tiny_hf.prompt_text(3), 6, 6, 11
    metrics, _ = evaluate(policy, [Prompt("p0", prompt)], CallableJudge(tiny_hf.score),
                          EvalConfig(samples=n, temperature=1.0, kl=True),
                          GenerationConfig(max_new_tokens=steps, batch_size=8), seed=seed, initial=initial)
    enc = policy.tokenizer([policy.format(prompt)], return_tensors="pt", padding=True)
    torch.manual_seed(batch_seed(seed, 0))  # the draw evaluate made
    out = policy.model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=steps,
                                num_return_sequences=n, pad_token_id=policy.tokenizer.pad_token_id,
                                eos_token_id=hf.stop_ids(policy), output_logits=True, return_dict_in_generate=True)
    scores = policy.model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    start, eos = enc["input_ids"].shape[1], policy.tokenizer.eos_token_id
    ratios = []
    for row in range(n):
        new = out.sequences[row, start:].tolist()
        length = new.index(eos) + 1 if eos in new else len(new)
        lp = float(scores[row, :length].sum())
        lp0 = _sequence_logprob(initial.model, out.sequences[row, :start + length], start)
        ratios.append(lp - lp0)
    assert metrics["kl_to_initial"]["mean"] == pytest.approx(sum(ratios) / n, abs=1e-4)

"""Generation backends: `generation.backend` dispatches, and vLLM fails in one line where it cannot run.

vLLM itself is an optional GPU extra and is not installed here; its sampling is not faked. These
tests pin the contract around it: the HF backend through the dispatcher is exactly `hf.generate`,
and asking for vLLM without the extra stops a run, a dry run and a direct call with one line
that says how to install it, before any work is done. HF sampling stops at every end-of-turn
token of the model's generation_config, and the log-probs of a sample are those of the tokens
generate() drew.
"""

import importlib.util

import pytest
import torch

import tiny_hf
from conftest import cli
from stagealign.config import load_config
from stagealign.dryrun import validate
from stagealign.generation import GenerationError, check_backend, hf, sample
from stagealign.config import ConfigError
from stagealign.logprobs import answer_logprobs
from stagealign.pipeline import Run
from stagealign.policy import load_policy
from stagealign.seeds import batch_seed

needs_no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
MISSING = "generation.backend: vllm needs the optional extra: pip install 'stagealign[vllm]'"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(tiny_hf.save_policy_dir(tmp_path_factory.mktemp("sft")))


def test_hf_backend_is_hf_generate(policy):
    prompts = [tiny_hf.prompt_text(i) for i in range(5)]
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=4, batch_size=2, seed=7)
    assert sample(policy, prompts, backend="hf", **kw) == hf.generate(policy, prompts, **kw).texts
    assert sample(policy, prompts, **kw) == hf.generate(policy, prompts, **kw).texts  # hf is the default


def test_unknown_backend_is_one_line():
    with pytest.raises(GenerationError, match="unknown backend 'tgi'; choose one of hf, vllm"):
        check_backend("tgi")


@needs_no_vllm
def test_vllm_without_the_extra_says_how_to_install(policy):
    with pytest.raises(GenerationError) as exc:
        check_backend("vllm")
    assert str(exc.value) == MISSING
    with pytest.raises(GenerationError, match=r"stagealign\[vllm\]"):
        sample(policy, ["w1 w2"], n=2, backend="vllm")


@needs_no_vllm
def test_run_with_vllm_stops_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(GenerationError, match=r"stagealign\[vllm\]"):
        Run(load_config(None, [f"run_dir={run_dir}", "generation.backend=vllm"])).execute()
    assert not run_dir.exists()
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {run_dir}\ngeneration:\n  backend: vllm\n")
    proc = cli("run", str(config), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {MISSING}"]


@needs_no_vllm
def test_dry_run_reports_the_missing_extra():
    with pytest.raises(ConfigError, match=r"pip install 'stagealign\[vllm\]'"):
        validate(load_config(None, ["world.scale=small", "generation.backend=vllm"]), cuda=True)


@pytest.fixture()
def two_eos(tmp_path):
    """A tiny policy whose generation_config lists two end tokens, as Llama-3-Instruct's does
    (<|end_of_text|>, <|eot_id|>): here </s> and the chat template's <end>."""
    policy = load_policy(tiny_hf.save_policy_dir(tmp_path / "two-eos"))
    end = policy.tokenizer.convert_tokens_to_ids("<end>")
    policy.model.generation_config.eos_token_id = [policy.tokenizer.eos_token_id, end]
    return policy, end


def test_hf_sampling_stops_at_every_end_token_of_the_generation_config(two_eos):
    policy, end = two_eos
    prompts = [tiny_hf.prompt_text(i) for i in range(6)]
    kw = dict(n=8, temperature=1.0, max_new_tokens=12, batch_size=3, seed=0)
    for answers in hf.generate(policy, prompts, **kw).texts:  # what the judge and the pool see
        for a in answers:
            assert "<end>" not in a.split()[:-1], f"sampling went on after <end>: {a!r}"
    drawn = hf.generate(policy, prompts, **kw)
    assert drawn.texts == sample(policy, prompts, **kw)
    stops = {policy.tokenizer.eos_token_id, end}
    rows = [ids for per_prompt in drawn.token_ids for ids in per_prompt]
    assert all(not stops & set(ids[:-1]) for ids in rows)  # a stop token only ever ends a sample
    assert any(ids[-1] == end for ids in rows) and any(ids[-1] not in stops and len(ids) == 12 for ids in rows)


def test_sample_log_probs_are_the_generation_step_scores(two_eos):
    """What the KL scores for a sample is the sum of the log-probs generate() drew its tokens with
    (temperature 1, no top-p), token for token: nothing re-tokenised, no space or EOS added."""
    policy, _ = two_eos
    prompts = [tiny_hf.prompt_text(i) for i in range(2)]  # equal lengths: one batch, no padding
    drawn = hf.generate(policy, prompts, n=4, temperature=1.0, max_new_tokens=8, batch_size=2, seed=5)
    enc = policy.tokenizer([policy.format(p) for p in prompts], return_tensors="pt", padding=True)
    torch.manual_seed(batch_seed(5, 0))
    out = policy.model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=8,
                                num_return_sequences=4, pad_token_id=policy.tokenizer.pad_token_id,
                                eos_token_id=hf.stop_ids(policy), output_logits=True, return_dict_in_generate=True)
    steps = policy.model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    ids = [t for per_prompt in drawn.token_ids for t in per_prompt]
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    expected = []
    for row, t in enumerate(ids):
        assert new[row, :len(t)].tolist() == t  # the ids returned are the ids drawn
        expected.append(float(steps[row, :len(t)].sum()))
    flat_prompts = [p for p in prompts for _ in range(4)]
    assert answer_logprobs(policy, flat_prompts, ids) == pytest.approx(expected, abs=1e-4)



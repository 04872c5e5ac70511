"""Generation backends: `generation.backend` dispatches, and vLLM fails in one line where it cannot run.

vLLM itself is an optional GPU extra and is not installed here; its sampling is not faked. These
tests pin the contract around it: the HF backend through the dispatcher is exactly `hf.sample`,
and asking for vLLM without the extra stops a run, a dry run and a direct call with one line
that says how to install it, before any work is done.
"""

import importlib.util

import pytest

import tiny_hf
from conftest import cli
from stagealign.config import load_config
from stagealign.dryrun import validate
from stagealign.generation import GenerationError, check_backend, hf, sample
from stagealign.config import ConfigError
from stagealign.pipeline import Run
from stagealign.policy import load_policy

needs_no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
MISSING = "generation.backend: vllm needs the optional extra: pip install 'stagealign[vllm]'"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(tiny_hf.save_policy_dir(tmp_path_factory.mktemp("sft")))


def test_hf_backend_is_hf_sample(policy):
    prompts = [tiny_hf.prompt_text(i) for i in range(5)]
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=4, batch_size=2, seed=7)
    assert sample(policy, prompts, backend="hf", **kw) == hf.sample(policy, prompts, **kw)
    assert sample(policy, prompts, **kw) == hf.sample(policy, prompts, **kw)  # hf is the default


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

"""The GPU presets under configs/presets and `stagealign.dryrun.validate`, with no network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import tiny_hf
from stagealign.config import ConfigError, load_config
from stagealign.dryrun import memory_plan, validate
from stagealign.memory import GB

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "presets"
EXPECTED = {
    "llama3-8b-instruct-dpo": ("meta-llama/Meta-Llama-3-8B-Instruct", "dpo"),
    "llama3-8b-instruct-slic": ("meta-llama/Meta-Llama-3-8B-Instruct", "slic-hf"),
    "zephyr-7b-sft-dpo": ("HuggingFaceH4/mistral-7b-sft-beta", "dpo"),
    "zephyr-7b-sft-slic": ("HuggingFaceH4/mistral-7b-sft-beta", "slic-hf"),
    "phi2-dpo": ("microsoft/phi-2", "dpo"),
    "qwen2.5-1.5b-dpo": ("Qwen/Qwen2.5-1.5B-Instruct", "dpo"),
    "pythia-1.4b-dpo": ("EleutherAI/pythia-1.4b", "dpo"),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub, no sockets: a dry run that tried to download would fail here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("network access during a dry run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_paper_presets_exist():
    assert {p.stem for p in PRESETS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_validates_offline(name):
    cfg = load_config(PRESETS / f"{name}.yaml")
    model, method = EXPECTED[name]
    assert (cfg.policy.model, cfg.training.method) == (model, method)
    assert cfg.iterations == 2 and cfg.schedule.kind == "auto" and cfg.boundary.probe_prompts == 2000
    assert (cfg.data.pool, cfg.data.format) == ("openbmb/UltraFeedback", "ultrafeedback")
    assert (cfg.judge.kind, cfg.judge.path) == ("pairrm", "llm-blender/PairRM-hf")
    assert cfg.training.beta == 0.1 and cfg.training.ipo_tau == 0.01
    t = cfg.training  # the public recipes' values (cited in each file)
    assert (t.lr_scheduler, t.warmup_ratio, t.gradient_checkpointing, t.max_length) == ("cosine", 0.1, True, 2048)
    assert t.batch_size * t.gradient_accumulation_steps == 128
    if cfg.policy.lora is None:  # full fine-tuning: the paper's rate, float32 master weights
        assert cfg.training.learning_rate == 5e-7 and cfg.policy.dtype == "float32"
    else:
        assert cfg.policy.dtype == "bfloat16" and ("7b" in name or "8b" in name)
    if name.startswith(("phi2", "pythia")):  # no chat template: a plain prompt format
        assert "{prompt}" in cfg.policy.prompt_template

    lines = validate(cfg, cuda=True)
    text = "\n".join(lines)
    assert f"hub model {model}" in text and "hub dataset openbmb/UltraFeedback" in text
    assert "options accepted by PairRMJudge" in text
    assert any(line.startswith("cost: whole run") for line in lines)
    assert not any("bfloat16" in line and line.startswith("warning") for line in lines)

    plan = [line for line in lines if line.startswith("memory:")]
    assert plan[0].startswith("memory: estimated peak GPU memory per device")
    for stage in ("sampling", "boundary/judging", "training", "KL/eval"):
        assert any(line.startswith(f"memory:   {stage} ~") for line in plan), stage
    peak = max(stage.total for stage in memory_plan(cfg)) / GB
    assert peak <= 80, f"{name}: estimated peak {peak:.0f} GB does not fit an 80 GB GPU"
    assert not any(line.startswith("warning: memory:") for line in lines)

    on_cpu = validate(cfg, cuda=False)  # GPU-only settings are flagged, not refused
    if cfg.policy.dtype == "bfloat16":
        assert any(line.startswith("warning: policy.dtype=bfloat16 without a CUDA GPU") for line in on_cpu)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_comments_are_current(name):
    text = (PRESETS / f"{name}.yaml").read_text()
    assert "planned, not implemented" not in text  # accelerate launch with ZeRO-3 / FSDP ships
    assert "install the extra first" not in text  # there is no wandb extra
    assert "src/stagealign/configs/accelerate/" in text


def test_a_preset_that_does_not_fit_the_gpu_is_flagged():
    cfg = load_config(PRESETS / "llama3-8b-instruct-dpo.yaml",
                      ["training.gradient_checkpointing=false", "training.batch_size=16",
                       "training.gradient_accumulation_steps=8"])
    lines = validate(cfg, cuda=False)
    assert any(line.startswith("warning: memory: the training stage needs") and "80 GB" in line for line in lines)


def _broken(tmp_path, old: str, new: str) -> Path:
    text = (PRESETS / "zephyr-7b-sft-dpo.yaml").read_text()
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_bad_judge_option_is_named(tmp_path):
    path = _broken(tmp_path, "  batch_size: 16\n", "  batch_size: 16\n  options: {max_lenght: 512}\n")
    with pytest.raises(ConfigError) as err:
        validate(load_config(path), cuda=True)
    msg = str(err.value)
    assert "judge.options" in msg and "max_lenght" in msg and "PairRMJudge" in msg and "max_length" in msg


@pytest.mark.parametrize("bad, key", [
    ("policy.model=meta llama/Llama 3", "policy.model"),
    ("policy.model=Meta-Llama-3-8B-Instruct/", "policy.model"),
    ("judge.path=llm-blender/PairRM-hf/extra", "judge.path"),
    ("data.pool=./no/such/pool.jsonl", "data.pool"),
])
def test_bad_names_and_missing_paths_fail_clearly(bad, key):
    cfg = load_config(PRESETS / "zephyr-7b-sft-dpo.yaml", [bad])
    with pytest.raises(ConfigError, match=key) as err:
        validate(cfg, cuda=True)
    assert "org/name" in str(err.value) or "does not exist" in str(err.value)


def test_several_errors_are_reported_together():
    cfg = load_config(PRESETS / "phi2-dpo.yaml", ["policy.prompt_template='Q: {question}'", "judge.options.bogus=1",
                                                   "policy.lora.target_modules=[]"])
    with pytest.raises(ConfigError) as err:
        validate(cfg, cuda=True)
    msg = str(err.value)
    assert msg.startswith("dry run: 3 problems")
    assert "policy.prompt_template" in msg and "bogus" in msg and "target_modules" in msg


def test_local_artifacts_are_checked(tmp_path):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    base = [f"policy.model={model}", f"data.pool={pool}", "judge.kind=callable", "judge.path=tiny_hf:score",
            "data.format=generic", "data.eval_prompts=4", "boundary.probe_prompts=4", "training.batch_size=8"]
    lines = validate(load_config(None, [*base, "schedule.kind=path", "schedule.path=off,on"]), cuda=False)
    text = "\n".join(lines)
    assert f"local model directory {model}" in text and "local generic pool" in text and "40 rows" in text
    assert "about 16 training prompts" in text and "1 on-policy iteration(s)" in text

    with pytest.raises(ConfigError, match="looks like 'generic', but data.format='ultrafeedback'"):
        validate(load_config(None, [*base, "data.format=ultrafeedback"]))
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        validate(load_config(None, [*base, "judge.path=tiny_hf:nope"]))
    (model / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no .safetensors weights"):
        validate(load_config(None, base))


def test_testbed_config_validates():
    lines = validate(load_config(None, ["world.scale=small"]), cuda=False)
    assert lines[1].startswith("policy: synthetic world policy 'weak'")
    with pytest.raises(ConfigError, match="not accepted by the ground_truth judge"):
        validate(load_config(None, ["judge.options.seed=1"]), cuda=False)


def test_legacy_model_names_warn_but_pools_need_an_org():
    lines = validate(load_config(PRESETS / "qwen2.5-1.5b-dpo.yaml", ["policy.model=gpt2"]), cuda=True)
    assert any(line.startswith("warning: policy.model: 'gpt2' has no organisation") for line in lines)
    with pytest.raises(ConfigError, match="data.pool: 'imdb' is neither"):
        validate(load_config(PRESETS / "qwen2.5-1.5b-dpo.yaml", ["data.pool=imdb"]), cuda=True)


def test_dry_run_flag_of_the_cli_validates_a_preset_without_training(tmp_path):
    from conftest import cli

    r = cli("run", "configs/presets/phi2-dpo.yaml", f"run_dir={tmp_path / 'r'}", "--dry-run",
            cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    assert "config: valid" in r.stdout and "cost:" in r.stdout and "memory:   training ~" in r.stdout
    assert "cost: race (auto's rule), per iteration: 2 copies x" in r.stdout  # auto's default rule is priced
    assert not (tmp_path / "r").exists()

"""LoRA through PEFT: only the adapter trains, the reference is the adapter disabled, and the
saved policy is the merged plain causal LM."""

from __future__ import annotations

import pytest
import torch

import tiny_hf
from stagealign.config import LoraSettings, TrainingConfig
from stagealign.policy import load_policy, merge_adapter
from stagealign.rundir import RunDir
from stagealign.training.preference import lora_config, train_preference

TRAIN = TrainingConfig(batch_size=8, learning_rate=5e-3, epochs=2, beta=0.1)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture()
def start(tmp_path):
    return tiny_hf.save_policy_dir(tmp_path / "init")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_the_adapter_trains_and_the_merged_policy_saves_plain(start, tmp_path):
    policy = load_policy(start)
    before = _state(policy.model)
    ids = policy.tokenizer(["<s> w1 w2 w3 w0 w4"], return_tensors="pt", add_special_tokens=False)

    res = train_preference(policy, tiny_hf.pairs(16), TRAIN, seed=0, work_dir=tmp_path / "work", lora=LORA,
                           merge=False)
    assert res.steps == 4 and res.metrics["lora"]
    assert policy.has_adapter
    n_all = sum(p.numel() for p in policy.model.parameters())
    assert 0 < res.metrics["trainable_params"] < n_all / 10  # the adapter only

    after = _state(policy.model)
    base = {}
    for name, value in after.items():
        if "lora_" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        base[plain] = value
    assert set(base) == set(before)
    for name, value in before.items():  # every base weight untouched by training
        assert torch.equal(base[name], value), name
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert len(lora_b) == 3 and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it trained

    with torch.no_grad():
        logits_adapter = policy.model(**ids).logits
    merge_adapter(policy)
    assert not policy.has_adapter
    with torch.no_grad():
        logits_merged = policy.model(**ids).logits
    torch.testing.assert_close(logits_merged, logits_adapter, rtol=1e-4, atol=1e-5)

    out = RunDir(tmp_path).model(1)
    policy.save(out)
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not {f for f in files if f.startswith("adapter_")}

    loaded = load_policy(out)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    saved = _state(loaded.model)
    assert set(saved) == set(before)
    changed = {k for k in before if not torch.equal(saved[k], before[k])}
    assert changed == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                       "model.layers.0.mlp.down_proj.weight"}
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**ids).logits, logits_adapter, rtol=1e-4, atol=1e-5)


def test_train_preference_merges_by_default_and_the_reference_is_the_start(start, tmp_path):
    policy = load_policy(start)
    # a learning rate too small to move the policy: the DPO loss stays log 2 only if the
    # reference (the adapter disabled) is exactly the starting policy
    still = TrainingConfig(batch_size=16, learning_rate=1e-9, epochs=5, beta=0.1)
    res = train_preference(policy, tiny_hf.pairs(16), still, seed=0, work_dir=tmp_path / "work",
                           lora=LoraSettings(r=4, alpha=8, dropout=0.0))  # all-linear
    assert not policy.has_adapter and type(policy.model).__name__ == "LlamaForCausalLM"
    logged = [h for h in res.metrics["log_history"] if "loss" in h]
    assert logged and logged[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    # all-linear: every projection of the block gets an adapter, the output layer does not
    r = 4  # attention q, k, v, o: 32 -> 32; MLP gate, up: 32 -> 64, down: 64 -> 32
    assert res.metrics["trainable_params"] == 4 * r * (32 + 32) + 3 * r * (32 + 64)


def test_lora_config_maps_settings():
    cfg = lora_config(LoraSettings(r=8, alpha=16, dropout=0.1, target_modules=["q_proj"]))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, set(cfg.target_modules)) == (8, 16, 0.1, {"q_proj"})
    assert str(cfg.task_type).endswith("CAUSAL_LM")
    assert lora_config(LoraSettings()).target_modules == "all-linear"
    with pytest.raises(ValueError, match="target_modules is empty"):
        lora_config(LoraSettings(target_modules=[]))


def _lora_on(policy, delta: float):
    """Wrap `policy.model` in a LoRA adapter on q_proj whose update is `delta` in every element."""
    from peft import LoraConfig, get_peft_model

    r = 4
    policy.model = get_peft_model(policy.model, LoraConfig(r=r, lora_alpha=r, target_modules=["q_proj"],
                                                           task_type="CAUSAL_LM"))
    with torch.no_grad():  # scaling alpha / r = 1: B @ A = r * a * b in every element
        for name, p in policy.model.named_parameters():
            if "lora_A" in name:
                p.fill_(1e-2)
            elif "lora_B" in name:
                p.fill_(delta / (r * 1e-2))
    return policy


def test_a_bf16_base_keeps_a_lora_update_below_bf16_resolution(start, tmp_path):
    policy = load_policy(start, dtype="bfloat16")
    name = "model.layers.0.self_attn.q_proj.weight"
    before = _state(policy.model)
    base = before[name]
    delta = 2e-6  # below half a bf16 unit of almost all these weights (init std 0.02)
    assert ((base.float() + delta).to(torch.bfloat16) == base).float().mean() > 0.9  # a bf16 merge loses it
    _lora_on(policy, delta)

    out = tmp_path / "merged"
    policy.save(out)
    saved = load_policy(out, dtype="float32").model.state_dict()
    torch.testing.assert_close(saved[name] - base.float(), torch.full_like(saved[name], delta), rtol=0, atol=1e-8)
    assert all(torch.equal(saved[k], v.float()) for k, v in before.items() if k != name)  # the rest as it was


def test_lora_under_deepspeed_zero3_is_refused_before_training(start, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import accelerate.state
    from accelerate.utils import DistributedType

    from stagealign import distributed

    policy = load_policy(start)
    before = _state(policy.model)
    # what `accelerate launch --config_file deepspeed_zero3.yaml` exports for the trainer to read
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError) as exc:
        train_preference(policy, tiny_hf.pairs(16), TRAIN, seed=0, work_dir=tmp_path / "work", lora=LORA,
                         where="iteration 1")
    assert str(exc.value) == f"iteration 1: {distributed.LORA_ZERO3}"
    assert not policy.has_adapter and not (tmp_path / "work").exists()
    assert all(torch.equal(v, before[k]) for k, v in _state(policy.model).items())
    distributed.refuse_lora_under_zero3(None)  # full fine-tuning under ZeRO-3 is fine
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    distributed.refuse_lora_under_zero3(LORA)  # ZeRO-2 leaves parameters whole
    # once a trainer has made accelerate's state, the check reads that too
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setattr(accelerate.state, "is_initialized", lambda: True)
    monkeypatch.setattr(accelerate.state, "AcceleratorState", lambda: SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED, deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    with pytest.raises(ValueError, match="policy.lora cannot be used with DeepSpeed ZeRO-3"):
        distributed.refuse_lora_under_zero3(LORA)

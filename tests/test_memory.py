"""Memory of real-model runs: the KL's log-probs without full-vocabulary logits, the training
options that save memory reaching TRL, no second model under LoRA, pairs `max_length` cannot hold
counted, and the estimator behind `--dry-run`'s memory plan (the presets' plans are checked in
test_presets.py)."""

from __future__ import annotations

import math

import pytest
import torch

import tiny_hf
from stagealign import memory
from stagealign.config import LoraSettings, TrainingConfig
from stagealign.logprobs import answer_logprobs, prompt_ids
from stagealign.policy import load_policy
from stagealign.training.common import checkpointing_arg
from stagealign.training.preference import dpo_config, train_preference


@pytest.fixture()
def start(tmp_path):
    return tiny_hf.save_policy_dir(tmp_path / "init")


def _plain(policy, prompt: str, answer: list[int]) -> float:
    """The plain computation: full logits, float32 log-softmax, the answer tokens' entries summed."""
    ctx = prompt_ids(policy, prompt)
    ids = torch.tensor([ctx + answer])
    with torch.no_grad():
        logp = policy.model(ids).logits[0, :-1].float().log_softmax(-1)
    return float(logp.gather(-1, ids[0, 1:, None])[len(ctx) - 1:].sum())


def test_kl_log_probs_equal_the_plain_computation_without_full_vocabulary_logits(start):
    policy = load_policy(start)
    prompts = [tiny_hf.prompt_text(i) for i in range(5)] + ["w1"]  # prompts of different lengths: padding
    answers = [[7, 8, 3], [9] * 11, [tiny_hf.build_tokenizer().eos_token_id], [12, 0, 1, 13], [20, 21], [5, 6]]
    calls = []  # every call of the output layer on the whole batch would materialise batch x length x vocab
    policy.model.lm_head.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    got = answer_logprobs(policy, prompts, answers, batch_size=4)
    assert calls == []
    assert got == pytest.approx([_plain(policy, p, a) for p, a in zip(prompts, answers)], abs=1e-4)
    assert answer_logprobs(policy, prompts[:1], [[]]) == [0.0]  # nothing sampled, nothing scored
    assert "forward" not in vars(policy.model)  # TRL's head is removed afterwards; generation is untouched


def test_memory_saving_training_options_reach_trls_arguments(start, tmp_path):
    policy = load_policy(start)
    default = dpo_config(policy, TrainingConfig(), seed=0, work_dir=tmp_path)
    flag = next(iter(checkpointing_arg(True)))
    assert getattr(default, flag) is False and str(default.lr_scheduler_type.value) == "linear"  # today's behaviour
    cfg = TrainingConfig(gradient_checkpointing=True, lr_scheduler="cosine", warmup_ratio=0.1, max_length=64)
    args = dpo_config(policy, cfg, seed=0, work_dir=tmp_path)
    assert getattr(args, flag) is True and getattr(args, "gradient_checkpointing") is True
    assert str(args.lr_scheduler_type.value) == "cosine"
    assert args.get_warmup_steps(200) == 20 and args.max_length == 64
    assert args.beta == 0.1
    ipo = TrainingConfig(method="ipo", beta=0.1, ipo_tau=0.01)
    assert dpo_config(policy, ipo, seed=0, work_dir=tmp_path).beta == 0.01  # TRL's beta is IPO's tau
    assert dpo_config(policy, ipo.model_copy(update={"method": "dpo"}), seed=0, work_dir=tmp_path).beta == 0.1


def _refuse_loading(monkeypatch) -> None:
    """Loading any model from a checkpoint fails: TRL building a reference copy would show."""
    from transformers import PreTrainedModel

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"a second model was loaded ({cls.__name__})")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def test_under_lora_the_reference_is_the_adapter_disabled_policy_not_a_copy(start, tmp_path, monkeypatch):
    policy, full = load_policy(start), load_policy(start)
    _refuse_loading(monkeypatch)
    # no precomputation: the reference is evaluated at every step, and still no second model exists;
    # a learning rate too small to move the policy keeps the loss at log 2 only if the reference is
    # exactly the starting policy
    still = TrainingConfig(batch_size=8, learning_rate=1e-9, epochs=1, precompute_ref_log_probs=False)
    res = train_preference(policy, tiny_hf.pairs(16), still, seed=0, work_dir=tmp_path / "lora",
                           lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    assert res.steps == 2 and res.metrics["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    # the check bites: full fine-tuning without precomputation does load a reference copy
    with pytest.raises(AssertionError, match="a second model was loaded"):
        train_preference(full, tiny_hf.pairs(16), still, seed=0, work_dir=tmp_path / "full")


def test_shapes_come_from_config_json_and_count_the_parameters(start):
    policy = load_policy(start)
    shape = memory.shape_of(str(start))
    norms = sum(p.numel() for n, p in policy.model.named_parameters() if "norm" in n)
    assert shape.params == sum(p.numel() for p in policy.model.parameters()) - norms
    llama3 = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
              "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    from_config = memory.shape_from_config(llama3)
    table = memory.HUB_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"]
    assert from_config.params == pytest.approx(table.params, rel=0.01)
    assert (from_config.kv_dim, from_config.dtype_bytes) == (table.kv_dim, 2)
    assert memory.shape_of("nobody/unknown-model") is None


def test_lora_parameters_match_peft(start):
    """The estimator's adapter size is what PEFT builds for all-linear."""
    from peft import get_peft_model

    from stagealign.training.preference import lora_config

    policy = load_policy(start)
    peft = get_peft_model(policy.model, lora_config(LoraSettings(r=4, alpha=8)))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert memory.lora_params(memory.shape_of(str(start)), 4) == trainable


def test_the_kl_step_no_longer_scales_with_the_vocabulary_times_the_batch():
    """The brief's case: 64 answers of ~1,000 tokens at Llama-3's vocabulary in bfloat16."""
    llama3 = memory.HUB_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"]
    full = memory.logprob_step(llama3, 64, 1000, 2, fused=False)["logits"]
    fused = memory.logprob_step(llama3, 64, 1000, 2)
    assert full / memory.GB == pytest.approx(82, abs=1)
    assert fused["logits tile"] / memory.GB < 0.5 and sum(fused.values()) / memory.GB < 15


def test_pairs_whose_prompt_fills_max_length_are_counted_not_silently_dropped(start, tmp_path, caplog):
    """`training.max_length` bounds the activations; TRL drops a pair whose prompt alone fills it."""
    policy = load_policy(start)
    long = [{"prompt": " ".join(tiny_hf.WORDS[:12]), "chosen": "w0 w1", "rejected": "w20 w21"}] * 3
    cfg = TrainingConfig(batch_size=8, learning_rate=1e-6, epochs=1, max_length=8)
    with caplog.at_level("WARNING", logger="stagealign.training.preference"):
        res = train_preference(policy, tiny_hf.pairs(16) + long, cfg, seed=0, work_dir=tmp_path / "work")
    assert res.metrics["dropped_prompt_too_long"] == 3 and res.pairs == 19
    assert "3 of 19 pairs dropped: their prompt alone fills training.max_length=8" in caplog.text

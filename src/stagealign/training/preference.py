"""Preference training (DPO / SLiC-HF / IPO) with TRL's DPOTrainer.

The three methods differ only in the loss on the policy/reference log-ratio margin, which TRL
already implements: `sigmoid` (DPO), `hinge` (SLiC-HF's calibration loss), `ipo`. The
reference is the iteration's starting policy by default (each iteration re-anchors, as in the
paper's iterative DPO); reference log-probs are precomputed once so only one model is in memory
during training.

LoRA (`policy.lora` in the run config): TRL wraps the model with a PEFT LoRA adapter
(`peft_config=`), and with no explicit reference model the reference is the same network with the
adapter disabled, i.e. exactly the iteration's starting policy, at no extra memory. After training
the adapter is MERGED into the weights (`merge_and_unload`), so every iteration's `model/` is a
plain safetensors causal LM. Why merge rather than keep adapters: iteration k+1 starts from, and is
anchored to, policy k; with merged checkpoints that is "load a causal LM" in every stage
(generation, boundary score, evaluation, the next LoRA on top), one code path, and other tools read
the checkpoint without PEFT. Stacking k adapters instead would make every loader PEFT-aware and the
reference of iteration k+1 "base + adapters 1..k", for no saving once the model is re-anchored
anyway. Cost: the merged weights are stored in the policy's dtype, so an update smaller than half
a unit in the last place of a bfloat16 weight is rounded away (`policy.dtype: float32` keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import DPOConfig
from trl import DPOTrainer as TRLDPOTrainer
from trl.data_utils import common_prefix_length

from stagealign.config import LoraSettings, TrainingConfig
from stagealign.distributed import shared_dataset
from stagealign.policy import Policy, merge_adapter
from stagealign.training.common import (FiniteLossCallback, ProgressCallback, quiet_libraries, trainer_kwargs,
                                        warmup_arg)

METHOD_LOSS = {"dpo": "sigmoid", "slic-hf": "hinge", "ipo": "ipo"}


def tokenize_pairs(dataset, tokenizer, *, max_length: int | None, truncation_mode: str = "keep_start"):
    """TRL's DPO tokenisation of plain-text rows, in three batched tokenizer calls; None where it does
    not apply (then TRL's own per-row `map` runs).

    Gives exactly the `prompt_ids` / `chosen_ids` / `rejected_ids` of TRL 1.x's `_prepare_dataset`
    (EOS appended to answers that lack it, the completion starting where the tokenised prompt and
    prompt + answer diverge, rows whose prompt alone fills `max_length` dropped under
    `keep_start`), checked against TRL in tests/test_training_speed.py. Applies to in-memory
    datasets of string prompt/chosen/rejected columns and fast tokenizers; chat rows, processors,
    and on-disk datasets (multi-process runs keep their map caches beside the files) go to TRL.
    Why: TRL's per-row `map` (three tokenizer calls and a dict per row) was about 15% of a whole
    training iteration of the synthetic world's policies (1,024 pairs; bench/train_throughput.py).
    """
    if (not isinstance(dataset, Dataset) or dataset.cache_files or len(dataset) == 0
            or sorted(dataset.column_names) != ["chosen", "prompt", "rejected"]
            or not getattr(tokenizer, "is_fast", False) or tokenizer.eos_token is None):
        return None
    rows = dataset.to_dict()
    if not all(isinstance(rows[k][0], str) for k in ("prompt", "chosen", "rejected")):
        return None  # conversational rows: TRL applies the chat template
    eos = tokenizer.eos_token
    prompts = rows["prompt"]
    p_ids = tokenizer(prompts)["input_ids"]
    c_ids = tokenizer([p + (c if c.endswith(eos) else c + eos) for p, c in zip(prompts, rows["chosen"])])["input_ids"]
    r_ids = tokenizer([p + (r if r.endswith(eos) else r + eos) for p, r in zip(prompts, rows["rejected"])])["input_ids"]
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for p, c, r in zip(p_ids, c_ids, r_ids):
        n = min(common_prefix_length(p, c), common_prefix_length(p, r))
        if max_length is not None and truncation_mode == "keep_start" and n >= max_length:
            continue  # the prompt alone fills max_length: no completion token would be left
        out["prompt_ids"].append(p[:n])
        out["chosen_ids"].append(c[n:])
        out["rejected_ids"].append(r[n:])
    return Dataset.from_dict(out)


#: On a CPU with native bfloat16 (AVX512-BF16 or AMX), policies from this many parameters on train
#: faster under bf16 autocast than in float32; smaller ones train slower (measured on a 2-core
#: AMX Xeon: 0.7x at 2.6M parameters, 1.1x at 8.9M, 1.4x at 15.8M; bench/train_throughput.py).
CPU_BF16_MIN_PARAMS = 10_000_000


def cpu_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16)."""
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(getattr(torch, "cpu", None), name, None)
        try:
            if fn is not None and fn():
                return True
        except (RuntimeError, AttributeError):
            continue
    return False


def cpu_bf16_autocast(model) -> bool:
    """Train `model` on the CPU under bf16 autocast (weights and optimizer stay float32)?

    Yes without CUDA, on a CPU with native bfloat16, for a model of `CPU_BF16_MIN_PARAMS` or
    more; $STAGEALIGN_CPU_BF16=0 / 1 forces it off / on (on only where the CPU has native bf16).
    """
    import os

    import torch

    if torch.cuda.is_available():
        return False
    force = os.environ.get("STAGEALIGN_CPU_BF16", "auto").strip().lower()
    if force in ("0", "false", "no", "off"):
        return False
    if not cpu_native_bf16():
        return False
    return force in ("1", "true", "yes", "on") or sum(p.numel() for p in model.parameters()) >= CPU_BF16_MIN_PARAMS


class DPOTrainer(TRLDPOTrainer):
    """TRL's DPOTrainer, with plain-text datasets tokenised in batches (`tokenize_pairs`)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        fast = tokenize_pairs(dataset, processing_class, max_length=args.max_length,
                              truncation_mode=args.truncation_mode)
        return fast if fast is not None else super()._prepare_dataset(dataset, processing_class, args, dataset_name)


@dataclass
class TrainResult:
    steps: int
    pairs: int
    seconds: float
    final_loss: float
    metrics: dict


def to_trl_rows(policy: Policy, rows: list[dict]) -> list[dict]:
    """Pairs in the format TRL tokenises the same way the policy was prompted.

    Chat models get conversational rows (TRL applies the chat template); plain models get the
    formatted prompt string and the answer with a leading space.
    """
    if policy.uses_chat_template:
        return [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    return [{"prompt": policy.format(r["prompt"]), "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
            for r in rows]


def lora_config(settings: LoraSettings):
    """The PEFT `LoraConfig` for a causal LM from the run config's `policy.lora` section."""
    from peft import LoraConfig

    targets = settings.target_modules
    if not isinstance(targets, str) and not targets:
        raise ValueError("policy.lora.target_modules is empty; name modules (e.g. [q_proj, v_proj]) or 'all-linear'")
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      task_type="CAUSAL_LM", bias="none")


def train_preference(policy: Policy, rows: list[dict], cfg: TrainingConfig, *, seed: int, work_dir: Path,
                     ref_policy: Policy | None = None, report_to: str = "none", where: str = "train",
                     progress=None, lora: LoraSettings | None = None, merge: bool = True) -> TrainResult:
    """Train `policy.model` in place on preference rows (dicts with prompt/chosen/rejected).

    With `lora`, only a LoRA adapter is trained (reference: the adapter disabled, unless
    `ref_policy` is given) and, with `merge` (the default), merged into the weights afterwards, so
    `policy.model` is again a plain causal LM. `merge=False` leaves `policy.model` a PEFT model
    (the base weights untouched); `stagealign.policy.merge_adapter` merges it later.
    """
    import time

    if not rows:
        raise ValueError(f"{where}: no preference pairs to train on")
    args = DPOConfig(
        loss_type=[METHOD_LOSS[cfg.method]],
        beta=cfg.beta,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        **warmup_arg(cfg.warmup_ratio),
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        precompute_ref_batch_size=max(cfg.batch_size, 64),
        lr_scheduler_type="linear",
        **{**trainer_kwargs(seed=seed, report_to=report_to, output_dir=str(work_dir / "trainer")),
           **({"bf16": True} if cpu_bf16_autocast(policy.model) else {})},
    )
    callbacks = [FiniteLossCallback(where)]
    if progress is not None:
        callbacks.append(ProgressCallback(progress))
    quiet_libraries()
    peft_config = None
    if lora is not None:
        try:
            peft_config = lora_config(lora)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    trainer = DPOTrainer(
        model=policy.model,
        ref_model=ref_policy.model if ref_policy is not None else None,
        args=args,
        train_dataset=shared_dataset(Dataset.from_list(to_trl_rows(policy, rows)), work_dir / "train_dataset"),
        processing_class=policy.tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and log replace its prints
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if peft_config is not None:
        policy.model = trainer.accelerator.unwrap_model(trainer.model)
        if merge:
            merge_adapter(policy)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return TrainResult(
        steps=int(out.global_step), pairs=len(rows), seconds=seconds,
        final_loss=float(history[-1]["loss"]) if history else float(out.training_loss),
        metrics={"train_loss": float(out.training_loss), "log_history": trainer.state.log_history,
                 "trainable_params": int(trainable), "lora": lora is not None, "bf16": bool(args.bf16)},
    )

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
anyway. The merge is done in float32 and saved so (`policy.merge_adapter`: in bfloat16 an update
below half a unit in the last place of a weight would be rounded away). LoRA under DeepSpeed ZeRO-3
is refused before training (`distributed.refuse_lora_under_zero3`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import DPOConfig
from trl import DPOTrainer as TRLDPOTrainer
from trl.data_utils import common_prefix_length

from stagealign.config import LoraSettings, TrainingConfig
from stagealign.distributed import refuse_lora_under_zero3, shared_dataset
from stagealign.policy import Policy, merge_adapter
from stagealign.quiet import quiet_libraries
from stagealign.training.common import FiniteLossCallback, ProgressCallback, trainer_kwargs, warmup_arg

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

    Chat models get conversational rows (TRL applies the chat template) over the prompt's whole
    conversation (a row's optional ``messages``: system prompt and earlier turns), or its text as
    one user turn; a prompt already written in a chat template stays a string and the answer
    follows its generation prompt directly. Plain models get the formatted prompt string and the
    answer with a leading space.
    """
    return [_trl_row(policy, r) for r in rows]


def _trl_row(policy: Policy, r: dict) -> dict:
    prompt = r.get("messages") or r["prompt"]
    if policy.uses_chat_template and not (isinstance(prompt, str) and policy.is_templated(prompt)):
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        return {"prompt": turns, "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}]}
    sep = "" if policy.uses_chat_template else " "
    return {"prompt": policy.format(prompt), "chosen": sep + r["chosen"], "rejected": sep + r["rejected"]}


def lora_config(settings: LoraSettings):
    """The PEFT `LoraConfig` for a causal LM from the run config's `policy.lora` section."""
    from peft import LoraConfig

    targets = settings.target_modules
    if not isinstance(targets, str) and not targets:
        raise ValueError("policy.lora.target_modules is empty; name modules (e.g. [q_proj, v_proj]) or 'all-linear'")
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      task_type="CAUSAL_LM", bias="none")


def loss_beta(cfg: TrainingConfig) -> float:
    """The `beta` TRL's loss takes: IPO's tau under method ipo (`training.ipo_tau`, default beta),
    DPO's beta, SLiC-HF's 1 / margin."""
    return cfg.ipo_tau if cfg.method == "ipo" and cfg.ipo_tau is not None else cfg.beta


def dpo_config(policy: Policy, cfg: TrainingConfig, *, seed: int, work_dir: Path, report_to: str = "none") -> DPOConfig:
    """TRL's arguments for one training stage, every one taken from the run config's `training:`.

    Scheduler, warmup and activation checkpointing go through `common.py`'s helpers, which pick
    the installed transformers' argument names. `max_length` truncates prompt + answer from the
    end (TRL 1.x's only truncation mode, `keep_start`, and it has no separate prompt limit); TRL
    drops a pair whose prompt alone fills it, and `train_preference` counts those.
    """
    return DPOConfig(
        loss_type=[METHOD_LOSS[cfg.method]],
        beta=loss_beta(cfg),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        **warmup_arg(cfg.warmup_ratio),
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        truncation_mode="keep_start",
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        precompute_ref_batch_size=cfg.precompute_batch_size,
        **{**trainer_kwargs(seed=seed, report_to=report_to, output_dir=str(work_dir / "trainer"),
                            checkpointing=cfg.gradient_checkpointing),
           **({"bf16": True} if cpu_bf16_autocast(policy.model) else {}),
           **checkpoint_args(cfg.save_steps)},
    )


def checkpoint_args(save_steps: int | None) -> dict:
    """Trainer checkpoints every `save_steps` steps, the last one kept (model, optimizer,
    scheduler and RNG states: what `Trainer.train(resume_from_checkpoint=...)` restores)."""
    if save_steps is None:
        return {}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1, "save_only_model": False}


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint of an interrupted training stage, if any. The Trainer writes
    `trainer_state.json` last, so a checkpoint without it was cut short by the kill."""
    found = [p for p in (work_dir / "trainer").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def reference_model(ref_policy: Policy | None):
    """The `ref_model` handed to TRL: only an explicit other checkpoint (`training.reference:
    initial` after the first iteration), never a copy of the policy being trained.

    With None, TRL needs no second model in memory: under LoRA the reference is the same network
    with the adapter disabled (the iteration's starting policy, exactly); in full fine-tuning with
    `precompute_ref_log_probs` it is the policy itself, scored once before its first step. Only
    full fine-tuning without precomputation makes TRL load a copy (from the checkpoint's path).
    """
    return ref_policy.model if ref_policy is not None else None


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
    try:
        refuse_lora_under_zero3(lora)  # first: the trainer's arguments already need DeepSpeed
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    args = dpo_config(policy, cfg, seed=seed, work_dir=work_dir, report_to=report_to)
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
        ref_model=reference_model(ref_policy),
        args=args,
        train_dataset=shared_dataset(Dataset.from_list(to_trl_rows(policy, rows)), work_dir / "train_dataset"),
        processing_class=policy.tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and log replace its prints
    dropped = _dropped_pairs(len(rows), trainer, cfg, where)
    resume = last_checkpoint(work_dir) if cfg.save_steps else None
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
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
                 "trainable_params": int(trainable), "lora": lora is not None, "bf16": bool(args.bf16),
                 "dropped_prompt_too_long": dropped,
                 "resumed_from_step": int(resume.name.split("-")[-1]) if resume else None},
    )


def _dropped_pairs(given: int, trainer, cfg: TrainingConfig, where: str) -> int:
    """Pairs TRL left out because their prompt alone fills `training.max_length` (no answer token
    would be left to train on); logged, since TRL drops them silently."""
    dropped = given - len(trainer.train_dataset)
    if dropped:
        logging.getLogger(__name__).warning(
            "%s: %d of %d pairs dropped: their prompt alone fills training.max_length=%s tokens", where, dropped,
            given, cfg.max_length)
    return dropped

"""Supervised fine-tuning with TRL's SFTTrainer: the synthetic world's initial policies
(`train_sft`) and `stagealign sft`'s real models (`fine_tune`), one trainer set-up for both.

Rows reach TRL in its own dataset formats, so TRL does the tokenisation, the chat template and
the loss masks: prompt-completion rows train on the completion only, ``messages`` rows on the
whole conversation (or, with ``assistant_only_loss``, on the assistant turns).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from stagealign.policy import Policy, merge_adapter
from stagealign.quiet import quiet_libraries
from stagealign.training.common import FiniteLossCallback, ProgressCallback, trainer_kwargs, warmup_arg


#: `config.SFTTrainingConfig` key -> the `SFTConfig` argument it sets (warmup and activation
#: checkpointing go through `common.py`, whose names depend on the transformers version).
SETTINGS_TO_TRL = {
    "learning_rate": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "lr_scheduler": "lr_scheduler_type",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "max_length": "max_length",
    "assistant_only_loss": "assistant_only_loss",
}


@dataclass
class SFTResult:
    """What a fine-tuning run did: optimizer steps, rows, seconds and the logged losses in order."""

    steps: int
    rows: int
    seconds: float
    train_loss: float
    losses: list[float] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)


def train_sft(policy: Policy, rows: list[dict], *, epochs: float, learning_rate: float, batch_size: int,
              seed: int, work_dir: Path) -> float:
    """Fine-tune in place on rows with `prompt` (raw) and `completion`; returns the final loss.

    The synthetic world's word-level text: the prompt in the policy's format, then " " + completion.
    """
    data = Dataset.from_list([{"prompt": policy.format(r["prompt"]), "completion": " " + r["completion"]}
                              for r in rows])
    args = SFTConfig(
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        **warmup_arg(0.05),
        completion_only_loss=True,
        max_length=None,
        **trainer_kwargs(seed=seed, report_to="none", output_dir=str(work_dir / "sft")),
    )
    return _train(policy, data, args, where="sft").train_loss


def fine_tune(policy: Policy, data: Dataset, settings: Any, *, seed: int, work_dir: Path, report_to: str = "none",
              run_name: str | None = None, lora: Any = None, progress=None) -> SFTResult:
    """Fine-tune `policy.model` in place on a TRL-format dataset (`messages`, or `prompt` + `completion`).

    `settings` is a `config.SFTTrainingConfig`. With `lora` (a `config.LoraSettings`) only a LoRA
    adapter is trained and then merged, so `policy.model` is again a plain causal LM.
    """
    from stagealign.training.preference import lora_config

    args = SFTConfig(
        **{trl_name: getattr(settings, key) for key, trl_name in SETTINGS_TO_TRL.items()},
        **warmup_arg(settings.warmup_ratio),
        run_name=run_name,
        **trainer_kwargs(seed=seed, report_to=report_to, output_dir=str(work_dir),
                         checkpointing=settings.gradient_checkpointing),
    )
    return _train(policy, data, args, where="sft", peft_config=lora_config(lora) if lora is not None else None,
                  progress=progress)


def _train(policy: Policy, data: Dataset, args: SFTConfig, *, where: str, peft_config=None,
           progress=None) -> SFTResult:
    """One `SFTTrainer` run on `policy` in place; a LoRA adapter is merged afterwards."""
    quiet_libraries()
    callbacks = [FiniteLossCallback(where)]
    if progress is not None:
        callbacks.append(ProgressCallback(progress))
    trainer = SFTTrainer(model=policy.model, args=args, train_dataset=data, processing_class=policy.tokenizer,
                         callbacks=callbacks, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    if peft_config is not None:
        policy.model = trainer.accelerator.unwrap_model(trainer.model)
        merge_adapter(policy)
    history = list(trainer.state.log_history)
    return SFTResult(steps=int(out.global_step), rows=len(data), seconds=seconds, train_loss=float(out.training_loss),
                     losses=[float(h["loss"]) for h in history if "loss" in h], log_history=history)

"""Preference training (DPO / SLiC-HF / IPO) with TRL's DPOTrainer.

The three methods differ only in the loss on the policy/reference log-ratio margin, which TRL
already implements: `sigmoid` (DPO), `hinge` (SLiC-HF's calibration loss), `ipo`. The
reference is the iteration's starting policy by default (each iteration re-anchors, as in the
paper's iterative DPO); reference log-probs are precomputed once so only one model is in memory
during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from stagealign.config import TrainingConfig
from stagealign.policy import Policy
from stagealign.training.common import FiniteLossCallback, ProgressCallback, quiet_libraries, trainer_kwargs

METHOD_LOSS = {"dpo": "sigmoid", "slic-hf": "hinge", "ipo": "ipo"}


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


def train_preference(policy: Policy, rows: list[dict], cfg: TrainingConfig, *, seed: int, work_dir: Path,
                     ref_policy: Policy | None = None, report_to: str = "none", where: str = "train",
                     progress=None) -> TrainResult:
    """Train `policy.model` in place on preference rows (dicts with prompt/chosen/rejected)."""
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
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        precompute_ref_batch_size=max(cfg.batch_size, 64),
        lr_scheduler_type="linear",
        **trainer_kwargs(seed=seed, report_to=report_to, logging_dir=str(work_dir / "tb"),
                         output_dir=str(work_dir / "trainer")),
    )
    callbacks = [FiniteLossCallback(where)]
    if progress is not None:
        callbacks.append(ProgressCallback(progress))
    quiet_libraries()
    trainer = DPOTrainer(
        model=policy.model,
        ref_model=ref_policy.model if ref_policy is not None else None,
        args=args,
        train_dataset=Dataset.from_list(to_trl_rows(policy, rows)),
        processing_class=policy.tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and log replace its prints
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h]
    return TrainResult(
        steps=int(out.global_step), pairs=len(rows), seconds=seconds,
        final_loss=float(history[-1]["loss"]) if history else float(out.training_loss),
        metrics={"train_loss": float(out.training_loss), "log_history": trainer.state.log_history},
    )

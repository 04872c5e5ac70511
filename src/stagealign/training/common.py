"""Settings shared by every TRL trainer we start: CPU-safe precision, no checkpoints, logging."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback


def trainer_kwargs(*, seed: int, report_to: str, output_dir: str, checkpointing: bool = False) -> dict[str, Any]:
    """Arguments every TRL config here gets.

    bf16 stays off on CPU (AVX2 CPUs emulate it slowly and TRL defaults it on); checkpoints
    are not written by the Trainer because the pipeline saves the finished model atomically
    itself and resumes at stage granularity. TensorBoard logs land in `output_dir/runs/`
    (transformers 5 takes the directory from there or from $TENSORBOARD_LOGGING_DIR).
    Activation checkpointing is off unless asked for (`training.gradient_checkpointing`): TRL
    turns it on by default, but for tiny and CPU models recomputation only costs time.
    """
    cuda = torch.cuda.is_available()
    kw: dict[str, Any] = dict(
        output_dir=output_dir,
        seed=seed,
        data_seed=seed,
        bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        fp16=False,
        use_cpu=not cuda,
        save_strategy="no",
        report_to=[] if report_to == "none" else [report_to],
        logging_steps=5,
        disable_tqdm=True,
        **checkpointing_arg(checkpointing),
        dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # the default hides NaN/inf step losses from the logs we check
    )
    return kw


def _training_fields() -> set[str]:
    import dataclasses

    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def checkpointing_arg(on: bool) -> dict[str, bool]:
    """Activation (gradient) checkpointing on or off, under the name the installed transformers
    takes: `activation_checkpointing` in recent 5.x releases, `gradient_checkpointing` before
    (pyproject allows both; vLLM's extra pins transformers below 5)."""
    return {"activation_checkpointing" if "activation_checkpointing" in _training_fields()
            else "gradient_checkpointing": on}


def warmup_arg(ratio: float) -> dict[str, float]:
    """Linear warmup over `ratio` of the steps: transformers 4.x names it `warmup_ratio`; 5.x removed
    that and reads a float `warmup_steps` below 1 as the same ratio."""
    return {"warmup_ratio" if "warmup_ratio" in _training_fields() else "warmup_steps": ratio}


class NumericsError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class FiniteLossCallback(TrainerCallback):
    """Stop with a clear message naming the step on the first non-finite gradient or logged loss.

    Gradients are checked before every optimizer step (after clipping, which turns a NaN norm
    into NaN gradients), so the weights are never updated with NaN/inf; a non-finite loss
    always gives non-finite gradients, and the logged loss and grad_norm are checked as well.
    With fp16 loss scaling, inf gradients are expected now and then (the scaler skips the step),
    so only the logs are checked there.
    """

    def __init__(self, where: str):
        self.where = where

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None or getattr(args, "fp16", False):
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        try:
            norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
            total = float(torch.stack([n.float().to(norms[0].device) for n in norms]).sum())
        except (RuntimeError, TypeError):  # sharded/distributed gradient types: the logs are still checked
            return
        if not math.isfinite(total):
            raise NumericsError(f"{self.where}: non-finite gradients (norm {total}) at step "
                                f"{state.global_step + 1}: the loss is NaN or infinite there "
                                "(try a lower training.learning_rate)")

    def on_step_end(self, args, state, control, **kwargs):
        from stagealign.artifacts import fault

        fault(f"train-step:{state.global_step}")  # test-only kill point, see artifacts.fault

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss", "grad_norm"):
            v = (logs or {}).get(key)
            if v is not None and not math.isfinite(float(v)):
                raise NumericsError(f"{self.where}: {key} became {v} at step {state.global_step}")


class ProgressCallback(TrainerCallback):
    """Forwards step progress to a callable (the CLI's rich progress bar)."""

    def __init__(self, advance):
        self.advance = advance

    def on_train_begin(self, args, state, control, **kwargs):
        self.advance(0, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.advance(1, state.max_steps)

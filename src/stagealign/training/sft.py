"""Supervised fine-tuning with TRL's SFTTrainer (prompt-completion rows, loss on completions)."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from stagealign.policy import Policy
from transformers import PrinterCallback

from stagealign.training.common import FiniteLossCallback, quiet_libraries, trainer_kwargs, warmup_arg


def train_sft(policy: Policy, rows: list[dict], *, epochs: float, learning_rate: float, batch_size: int,
              seed: int, work_dir: Path) -> float:
    """Fine-tune in place on rows with `prompt` (raw) and `completion`; returns the final loss."""
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
    quiet_libraries()
    trainer = SFTTrainer(model=policy.model, args=args, train_dataset=data, processing_class=policy.tokenizer,
                         callbacks=[FiniteLossCallback("sft")])
    trainer.remove_callback(PrinterCallback)
    out = trainer.train()
    return float(out.training_loss)

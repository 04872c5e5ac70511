"""The arguments we hand to transformers / TRL exist in the installed versions.

pyproject allows transformers 4.56 up to 5.x, whose TrainingArguments renamed fields
(`warmup_ratio` left in 5.x; `activation_checkpointing` arrived late in 5.x): a name the installed
version lacks is a TypeError at the first training stage of a user's run.
"""

from __future__ import annotations

import dataclasses

from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from stagealign.training.common import checkpointing_arg, trainer_kwargs, warmup_arg


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_trainer_argument_exists_in_the_installed_versions(tmp_path):
    kw = trainer_kwargs(seed=0, report_to="none", output_dir=str(tmp_path))
    for cls in (TrainingArguments, DPOConfig, SFTConfig):
        missing = set(kw) - _fields(cls)
        assert not missing, f"{cls.__name__} has no {sorted(missing)}"
        for extra in (warmup_arg(0.1), checkpointing_arg(True)):
            assert set(extra) <= _fields(cls), f"{cls.__name__} has no {sorted(extra)}"


def test_warmup_ratio_means_a_share_of_the_steps(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **warmup_arg(0.25))
    assert args.get_warmup_steps(40) == 10  # 25% of 40 steps, not 0 steps and not 0.25 of one step


def test_checkpointing_switch_reaches_the_trainer(tmp_path):
    on = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **checkpointing_arg(True))
    name = next(iter(checkpointing_arg(True)))
    assert getattr(on, name) is True

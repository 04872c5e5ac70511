"""Every seed a run derives from its one `seed`: the only place that knows the rules.

Determinism is a product promise (the same config and seed give the same numbers, and a resumed
run equals an uninterrupted one), so each random draw takes its seed from the run seed plus
where it happens. `derive` is the rule for anything new: a hash of the parts, so seeds of
different places never collide the way `seed + k` ones can. The three arithmetic rules below
predate it; they are kept bit for bit because recorded results (the README's tables, bench/
results) depend on them.
"""

from __future__ import annotations

import hashlib


def derive(seed: int, *parts: object) -> int:
    """A 31-bit seed for the draw named by `parts` (e.g. iteration and stage) under run seed `seed`."""
    h = hashlib.sha256(":".join(str(x) for x in (seed, *parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def stage_seed(seed: int, iteration: int, stage: str) -> int:
    """Seed of a pipeline stage: depends only on (seed, iteration, stage), which is what lets grid
    cells adopt each other's shared prefixes (`rundir.RunDir.adopt`)."""
    return derive(seed, iteration, stage)


def batch_seed(seed: int, batch: int) -> int:
    """HF sampling: the seed of one `generate` batch (each rank seeds the batches it owns)."""
    return seed * 1_000_003 + batch


def look_seed(seed: int, look: int) -> int:
    """Boundary probe: the sampling seed of one sequential look."""
    return seed * 7919 + look


def split_seed(data_seed: int) -> int:
    """Real pools: the shuffle that holds out eval and probe prompts (from `data.seed`, not the run
    seed, so runs of a grid over run seeds evaluate on the same prompts)."""
    return data_seed + 17

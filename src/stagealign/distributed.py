"""Multi-process runs: who am I, and the few collectives the pipeline needs.

Under `accelerate launch` (or `torchrun`) every process runs the whole pipeline on the same data:
sampling and judging are split across the processes and gathered back, so every rank holds the
same candidates, votes and metrics, and every decision is taken identically everywhere; training
goes through TRL, whose Trainer does DDP / DeepSpeed / FSDP itself under the launcher. Only the
main process writes the run directory. Rank and world size come from accelerate's `PartialState`
(which also picks gloo on CPUs and NCCL on GPUs, and sets each rank's GPU).

A plain single process never touches `torch.distributed`: every helper here is then the identity,
so one process behaves exactly as before the multi-process support existed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np

from stagealign.judges.base import Judge

T = TypeVar("T")


def launched() -> bool:
    """True in a process started by a multi-process launcher (WORLD_SIZE > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


#: how long a collective waits for the slowest rank: the main process alone builds the provider
#: first (model, pool and judge downloads), which may take far longer than torch's 30 minutes
TIMEOUT = timedelta(hours=2)


def _state():
    """accelerate's PartialState, created on first use: gloo on CPU (as TRL's `use_cpu`), NCCL on GPUs."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)


def rank() -> int:
    return _state().process_index if launched() else 0


def size() -> int:
    return _state().num_processes if launched() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if launched():
        _state().wait_for_everyone()


def shard_bounds(n: int, align: int = 1) -> tuple[int, int]:
    """This rank's contiguous slice [lo, hi) of n items, in whole blocks of `align` items (the
    last block may be short), spread as evenly as np.array_split does, in rank order."""
    r, w = rank(), size()
    blocks = -(-n // align)
    base, extra = divmod(blocks, w)
    lo = r * base + min(r, extra)
    hi = lo + base + (1 if r < extra else 0)
    return min(lo * align, n), min(hi * align, n)


def gather(local: list) -> list:
    """Concatenate every rank's list, in rank order, on every rank."""
    if not launched():
        return list(local)
    from accelerate.utils import gather_object

    return gather_object(list(local))


def from_main(obj: T) -> T:
    """The main process's `obj` on every rank (so a decision is the main process's everywhere)."""
    if not launched():
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def shard_map(fn: Callable[[list], Sequence], items: Sequence, align: int = 1) -> list:
    """`fn(items)` computed on contiguous shards, one per rank, gathered in order on every rank.

    `fn` maps a list to a sequence of the same length, item by item (a batch of judge calls, log
    probabilities of answers); each rank computes only its shard. With `align` set to `fn`'s own
    batch size, every batch is the one a single process would run, so padded batches give the
    same floating-point results as in one process.
    """
    if not launched():
        return list(fn(list(items)))
    lo, hi = shard_bounds(len(items), align)
    part = list(fn(list(items[lo:hi]))) if hi > lo else []
    if len(part) != hi - lo:
        raise ValueError(f"sharded call returned {len(part)} results for {hi - lo} inputs")
    return gather(part)


class ShardedJudge(Judge):
    """A judge whose calls are split across ranks and gathered: same answers, 1/size of the work each.

    Inputs arrive grouped by prompt (all answers of a prompt are adjacent), so contiguous shards
    keep a prompt's comparisons together. `calls` adds up the inner judge's evaluations of all ranks.
    """

    def __init__(self, inner: Judge):
        self.inner = inner
        self.name = inner.name
        self.pairwise_only = inner.pairwise_only
        self.temperature = inner.temperature
        self.calls = getattr(inner, "calls", 0)

    def _sharded(self, call: Callable[..., np.ndarray], *columns: list) -> np.ndarray:
        lo, hi = shard_bounds(len(columns[0]))
        before = getattr(self.inner, "calls", 0)
        part = call(*(c[lo:hi] for c in columns)).tolist() if hi > lo else []
        spent = getattr(self.inner, "calls", 0) - before
        # one collective per call: [values..., calls spent] from every rank
        merged = gather([(part, spent)])
        self.calls += sum(s for _, s in merged)
        return np.asarray([v for p, _ in merged for v in p], dtype=np.float64)

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        return self._sharded(self.inner.score, prompts, answers)

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        return self._sharded(self.inner.prob, prompts, a, b)


def sharded_judge(judge: Judge | None) -> Judge | None:
    """`judge` wrapped as a ShardedJudge in a multi-process launch, unchanged otherwise."""
    return ShardedJudge(judge) if judge is not None and launched() and size() > 1 else judge


def shared_dataset(dataset, folder):
    """`dataset` backed by files in `folder` that every rank reads (the main process writes them).

    An in-memory `datasets.Dataset` keeps its map caches in a per-process temporary directory, so
    a cache file named by one rank is missing for the others: TRL's DPOTrainer writes its
    precomputed reference log-probs on the main process and every rank then opens that file. A
    dataset saved to disk keeps its caches beside its files, where all ranks find them.
    """
    if not launched():
        return dataset
    from datasets import load_from_disk

    if is_main():
        dataset.save_to_disk(str(folder))
    barrier()
    return load_from_disk(str(folder))


def single_process_env() -> dict[str, str]:
    """This process's environment without the launcher's variables: a child started with it is an
    ordinary single process (used to train the testbed's cached initial policies outside DDP)."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
            "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith(("TORCHELASTIC_", "ACCELERATE_", "FSDP_"))}


#: the one line a LoRA run under DeepSpeed ZeRO-3 stops with, before anything is trained
LORA_ZERO3 = ("policy.lora cannot be used with DeepSpeed ZeRO-3: the adapter would be merged into "
              "partitioned weights; launch LoRA runs with ddp.yaml (LoRA needs no partitioning) or set "
              "policy.lora: null to train fully under ZeRO-3")


def _zero3_state() -> bool:
    """accelerate's state, once a trainer has built one in this process, partitions with ZeRO-3."""
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import DistributedType

    if not is_initialized():
        return False
    st = AcceleratorState()
    return st.distributed_type == DistributedType.DEEPSPEED and st.deepspeed_plugin.zero_stage == 3


def zero3() -> bool:
    """True when DeepSpeed ZeRO-3 partitions the parameters trained in this process.

    Known before any trainer exists from what `accelerate launch` exported for the trainer to
    read: `ACCELERATE_USE_DEEPSPEED` and the stage, which accelerate's own `DeepSpeedPlugin`
    resolves (from `ACCELERATE_DEEPSPEED_ZERO_STAGE` or the DeepSpeed config file; no DeepSpeed
    import); afterwards also from accelerate's state.
    """
    from accelerate.utils import DeepSpeedPlugin, parse_flag_from_env

    if _zero3_state():
        return True
    return parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and DeepSpeedPlugin().zero_stage == 3


def refuse_lora_under_zero3(lora) -> None:
    """ValueError (`LORA_ZERO3`) when `lora` (the run's `policy.lora`) is set and ZeRO-3 is on.

    Why refuse rather than merge after gathering: the merge (`policy.merge_adapter`) runs on the
    trained model, whose ZeRO-3 parameters are empty placeholders outside a gathering context,
    and `full_state_dict` gathers a plain model's weights, not a PEFT model's (whose keys and
    adapter it would have to merge by hand). LoRA keeps a whole copy of the policy per GPU anyway,
    so DDP serves it. Call before training starts (`train_preference` does; a run can at start).
    """
    if lora is not None and zero3():
        raise ValueError(LORA_ZERO3)


def full_state_dict(model) -> dict[str, Any] | None:
    """Whole weights of a model trained in this launch, on the main process; None when they are
    whole on every rank already (one process, DDP). Collective: call on every rank.

    DeepSpeed ZeRO-3 partitions each parameter (gathered with `GatheredParameters`); FSDP2
    (`fsdp_version: 2`) turns parameters into DTensors (gathered with torch's
    `get_model_state_dict(full_state_dict=True)`). FSDP1 wraps the model in another module, so
    the policy object here would not see the shards: it is refused with a one-line error. A LoRA
    model never gets here under ZeRO-3: `refuse_lora_under_zero3` stops it before training.
    """
    if not launched():
        return None
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import DistributedType

    if not is_initialized():  # no Trainer ran in this process: nothing is sharded
        return None
    st = AcceleratorState()
    if _zero3_state():
        import deepspeed

        from transformers.integrations import unset_hf_deepspeed_config

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if is_main() else None
        # the trainer's ZeRO-3 config would make every later from_pretrained (the next sampling
        # policy) load partitioned; the next trainer sets it again
        unset_hf_deepspeed_config()
        return sd
    if st.distributed_type == DistributedType.FSDP:
        if getattr(st.fsdp_plugin, "fsdp_version", 1) != 2:
            raise ValueError("FSDP with fsdp_version 1 is not supported: use fsdp_version: 2 "
                             "(stagealign/configs/accelerate/fsdp.yaml)")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if is_main() else None
    return None

"""On-policy sampling with vLLM (optional extra `stagealign[vllm]`, CUDA GPUs): `generation.hf`'s contract.

vLLM loads weights from a folder, not from the model in memory, so it samples from the checkpoint
the policy was loaded from: every policy the pipeline samples from is one (the initial model, or an
iteration's `model/`, plain safetensors with any LoRA adapter merged). A policy that still carries
an unmerged adapter is saved merged (safetensors) to a temporary folder first. One engine is kept
per checkpoint and replaced when another checkpoint is sampled, so the boundary score's batches
and the on-policy build of an iteration share one engine.

Prompts are formatted and tokenised exactly as for HF `generate` and handed to vLLM as token ids
(no second BOS from vLLM's own tokenisation). Every prompt gets its own seed drawn from (seed,
prompt index), so answers depend neither on vLLM's batching nor on how prompts are split across
processes. In a multi-process launch each rank runs an engine on its own GPU over a contiguous
shard of the prompts (`distributed_executor_backend="external_launcher"`, as TRL's colocated
vLLM does) and the answers are gathered.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from pathlib import Path

from stagealign import distributed
from stagealign.policy import Policy
from stagealign.seeds import derive

MISSING = "generation.backend: vllm needs the optional extra: pip install 'stagealign[vllm]'"
NO_GPU = "generation.backend: vllm needs a CUDA GPU and none is visible here; use generation.backend: hf"

_engine: tuple[str, object] | None = None  # (checkpoint folder, vllm.LLM)


def check() -> None:
    """Raise `GenerationError` with one line when vLLM is not installed or there is no CUDA GPU."""
    from stagealign.generation import GenerationError

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise GenerationError(MISSING) from None
    import torch

    if not torch.cuda.is_available():
        raise GenerationError(NO_GPU)


def _checkpoint(policy: Policy) -> str:
    """A folder (or hub name) vLLM can load with this policy's weights."""
    source = str(getattr(policy.model, "name_or_path", "") or "")
    if source and not policy.has_adapter:
        return source
    folder = Path(tempfile.mkdtemp(prefix="stagealign-vllm-")) / "model"
    policy.save(folder)  # merges the adapter in place: a plain safetensors causal LM
    policy.model.name_or_path = str(folder)  # the merged model in memory is now this checkpoint
    return str(folder)


def _llm(policy: Policy):
    """The engine for this policy's checkpoint, created on first use (the previous one is freed)."""
    global _engine
    import torch
    from vllm import LLM

    path = _checkpoint(policy)
    if _engine is not None and _engine[0] == path:
        return _engine[1]
    _engine = None
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()  # the HF copy of the policy may share the GPU
    kwargs = dict(model=path, tokenizer=str(getattr(policy.tokenizer, "name_or_path", "") or path),
                  dtype=str(policy.model.dtype).removeprefix("torch."), seed=0,
                  gpu_memory_utilization=round(0.9 * free / total, 3),
                  trust_remote_code=policy.trust_remote_code)  # only when the user asked for it
    if distributed.size() > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"  # one engine per rank, as TRL colocates
    _engine = (path, LLM(**kwargs))
    return _engine[1]


def _prompt_seed(seed: int, index: int) -> int:
    return derive(seed, index)


def sample(policy: Policy, prompts: list[str], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 32, seed: int = 0,
           progress: Callable[[int], None] | None = None) -> list[list[str]]:
    """`n` sampled answers for each prompt (raw prompt text; the policy formats it)."""
    check()
    from vllm import SamplingParams

    lo, hi = distributed.shard_bounds(len(prompts))
    tok = policy.tokenizer
    special = not policy.uses_chat_template
    requests = [{"prompt_token_ids": tok(policy.format(p), add_special_tokens=special)["input_ids"]}
                for p in prompts[lo:hi]]
    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                             seed=_prompt_seed(seed, lo + i)) for i in range(hi - lo)]
    llm = _llm(policy)  # on every rank, even one without prompts: engines start together
    mine: list[list[str]] = []
    if requests:
        outputs = llm.generate(requests, sampling_params=params, use_tqdm=False)
        mine = [[c.text.strip() for c in out.outputs] for out in outputs]
    if progress:
        progress(len(mine))
    return distributed.gather(mine)

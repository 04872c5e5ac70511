"""On-policy sampling with vLLM (optional extra `stagealign[vllm]`, CUDA GPUs): `generation.hf`'s contract.

vLLM loads weights from a folder, not from the model in memory, so it samples from the checkpoint
the policy was loaded from: every policy the pipeline samples from is one (the initial model, or an
iteration's `model/`, plain safetensors with any LoRA adapter merged). A policy that still carries
an unmerged adapter is saved merged (safetensors) to a temporary folder first. One engine is kept
per checkpoint and replaced when another checkpoint is sampled, so the boundary score's batches
and the on-policy build of an iteration share one engine. The engine samples in the policy's
dtype (the one it was loaded in), not in the checkpoint's: a merged LoRA checkpoint is float32.

The engine shares the GPU with the HF copy of the policy (training, log-probabilities for KL,
reward models), so it is started with vLLM's sleep mode: `suspend()` puts it to sleep (level 1:
weights to CPU memory, KV cache dropped; TRL's colocated vLLM sleeps the same way around its
training steps) and the next `sample` wakes it (`resume()`). Both are no-ops when no engine was
ever started, so callers need not know which backend sampled.

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
from collections.abc import Callable, Sequence
from pathlib import Path

from stagealign import distributed
from stagealign.generation import Done, OnBatch, PromptLike, Samples
from stagealign.policy import Policy
from stagealign.seeds import derive

MISSING = "generation.backend: vllm needs the optional extra: pip install 'stagealign[vllm]'"
NO_GPU = "generation.backend: vllm needs a CUDA GPU and none is visible here; use generation.backend: hf"

_engine: tuple[str, object] | None = None  # (checkpoint folder, vllm.LLM)
_asleep = False  # whether _engine is in vLLM's sleep mode (suspend() / resume())


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
    dtype = policy.model.dtype  # a PEFT model's is its base weights' (the adapter's are float32)
    folder = Path(tempfile.mkdtemp(prefix="stagealign-vllm-")) / "model"
    policy.save(folder)  # merges the adapter in place, exactly (float32): a plain safetensors causal LM
    # the model in memory is now this checkpoint as loaded in the policy's dtype
    policy.model = policy.model.to(dtype)
    policy.model.name_or_path = str(folder)
    return str(folder)


def _free_cuda() -> None:
    """Return PyTorch's cached GPU blocks, so that vLLM can map its memory."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def suspend() -> None:
    """Put the engine to sleep before training and KL: vLLM's sleep level 1 moves its weights to
    CPU memory and frees its KV cache, so the GPU is the HF model's. No-op when no engine exists
    (vLLM never imported or started) or it sleeps already; the next `sample` wakes it."""
    global _asleep
    if _engine is None or _asleep:
        return
    _engine[1].sleep(level=1)
    _asleep = True


def resume() -> None:
    """Wake a sleeping engine for sampling (`sample` calls it): PyTorch's cached blocks are freed
    first, as TRL does, so the weights and KV cache fit again. No-op without a sleeping engine."""
    global _asleep
    if _engine is None or not _asleep:
        return
    _free_cuda()
    _engine[1].wake_up()
    _asleep = False


def _llm(policy: Policy):
    """The engine for this policy's checkpoint, awake; created on first use (the previous one is freed)."""
    global _engine, _asleep
    import torch
    from vllm import LLM

    path = _checkpoint(policy)
    if _engine is not None and _engine[0] == path:
        resume()
        return _engine[1]
    _engine, _asleep = None, False
    _free_cuda()
    free, total = torch.cuda.mem_get_info()  # the HF copy of the policy may share the GPU
    kwargs = dict(model=path, tokenizer=str(getattr(policy.tokenizer, "name_or_path", "") or path),
                  dtype=str(policy.model.dtype).removeprefix("torch."),  # the policy's, not the checkpoint's
                  seed=0, gpu_memory_utilization=round(0.9 * free / total, 3), enable_sleep_mode=True,
                  trust_remote_code=policy.trust_remote_code)  # only when the user asked for it
    if distributed.size() > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"  # one engine per rank, as TRL colocates
    _engine = (path, LLM(**kwargs))
    return _engine[1]


def _prompt_seed(seed: int, index: int) -> int:
    return derive(seed, index)


def generate(policy: Policy, prompts: Sequence[PromptLike], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 32, seed: int = 0,
             progress: Callable[[int], None] | None = None, done: Done | None = None,
             on_batch: OnBatch | None = None) -> Samples:
    """`n` sampled answers for each prompt (raw prompt text; the policy formats it), with the
    token ids vLLM sampled (`CompletionOutput.token_ids`). vLLM schedules the whole call as one
    batch: `done` prompts are reused (each prompt's seed is its own, so the rest are unchanged)
    and `on_batch` hears about the call once it finished."""
    check()
    from vllm import SamplingParams

    done = done or {}
    lo, hi = distributed.shard_bounds(len(prompts))
    todo = [i for i in range(lo, hi) if i not in done]
    tok = policy.tokenizer
    special = not policy.uses_chat_template
    requests = [{"prompt_token_ids": tok(policy.format(prompts[i]), add_special_tokens=special)["input_ids"]}
                for i in todo]
    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                             seed=_prompt_seed(seed, i)) for i in todo]
    llm = _llm(policy)  # on every rank, even one without prompts: engines start together
    mine = {i: done[i] for i in range(lo, hi) if i in done}
    if requests:
        outputs = llm.generate(requests, sampling_params=params, use_tqdm=False)
        fresh = {i: ([c.text.strip() for c in out.outputs], [list(c.token_ids) for c in out.outputs])
                 for i, out in zip(todo, outputs)}
        if on_batch is not None:
            on_batch(todo, [fresh[i][0] for i in todo], [fresh[i][1] for i in todo])
        mine.update(fresh)
    if progress:
        progress(hi - lo)
    rows = distributed.gather([mine[i] for i in range(lo, hi)])
    return Samples(texts=[t for t, _ in rows], token_ids=[i for _, i in rows])

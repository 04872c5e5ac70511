"""Candidate generation: `generate(policy, prompts, n=...)` / `sample(...)`, one contract, two engines.

`generation.backend` picks the engine: `hf` (HF `generate`, the default, CPU or GPU) or `vllm`
(the optional extra, CUDA GPUs). Both return `n` stripped answers per prompt, in prompt order,
for raw prompt text that the policy formats, and both draw from seeds so that the same call gives
the same answers however the prompts are split across processes (the two engines' samplers
differ, so the same seed gives different answers in each). `check_backend` fails in one line
before a run starts when the engine cannot work here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass

from stagealign.policy import Policy

#: a prompt as `Policy.format` takes it: text, a conversation (messages) or a `data.schema.Prompt`
PromptLike = Any
#: samples an interrupted call already finished: prompt index -> (answers, their token ids)
Done = dict[int, tuple[list[str], list[list[int]]]]
#: called with each finished batch: (prompt indices, their answers, their token ids)
OnBatch = Callable[[list[int], list[list[str]], list[list[list[int]]]], None]

BACKENDS = ("hf", "vllm")


class GenerationError(ValueError):
    """The configured generation backend cannot run here (missing extra, no GPU)."""


def check_backend(backend: str) -> None:
    """Raise GenerationError (one line) when `backend` cannot run on this machine."""
    if backend not in BACKENDS:
        raise GenerationError(f"generation.backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        from stagealign.generation import vllm

        vllm.check()


@dataclass
class Samples:
    """`n` samples per prompt, in prompt order: the stripped answer texts every stage reads, and
    the token ids each was sampled as (ending with the end-of-turn token it stopped on, if any),
    which is what the KL estimate scores."""

    texts: list[list[str]]
    token_ids: list[list[list[int]]]


def generate(policy: Policy, prompts: Sequence[PromptLike], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0,
             progress: Callable[[int], None] | None = None, backend: str = "hf", done: Done | None = None,
             on_batch: OnBatch | None = None) -> Samples:
    """`n` sampled answers for each prompt with the chosen backend, with their token ids
    (`batch_size` is HF's prompts per `generate` call; vLLM schedules its own batches). `done` and
    `on_batch` resume an interrupted call without redoing its finished batches (see `hf.generate`)."""
    kw = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
              progress=progress, done=done, on_batch=on_batch)
    if backend == "hf":
        from stagealign.generation import hf

        return hf.generate(policy, prompts, batch_size=batch_size, **kw)
    check_backend(backend)
    from stagealign.generation import vllm

    return vllm.generate(policy, prompts, **kw)


def sample(policy: Policy, prompts: Sequence[PromptLike], **kwargs) -> list[list[str]]:
    """The answer texts of `generate` (same arguments)."""
    return generate(policy, prompts, **kwargs).texts

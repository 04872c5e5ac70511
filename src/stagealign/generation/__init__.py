"""Candidate generation: `sample(policy, prompts, n=...)`, one contract, two engines.

`generation.backend` picks the engine: `hf` (HF `generate`, the default, CPU or GPU) or `vllm`
(the optional extra, CUDA GPUs). Both return `n` stripped answers per prompt, in prompt order,
for raw prompt text that the policy formats, and both draw from seeds so that the same call gives
the same answers however the prompts are split across processes (the two engines' samplers
differ, so the same seed gives different answers in each). `check_backend` fails in one line
before a run starts when the engine cannot work here.
"""

from __future__ import annotations

from collections.abc import Callable

from stagealign.policy import Policy

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


def sample(policy: Policy, prompts: list[str], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0,
           progress: Callable[[int], None] | None = None, backend: str = "hf") -> list[list[str]]:
    """`n` sampled answers for each prompt with the chosen backend (`batch_size` is HF's prompts per
    `generate` call; vLLM schedules its own batches)."""
    if backend == "hf":
        from stagealign.generation import hf

        return hf.sample(policy, prompts, n=n, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)
    check_backend(backend)
    from stagealign.generation import vllm

    return vllm.sample(policy, prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                       seed=seed, progress=progress)

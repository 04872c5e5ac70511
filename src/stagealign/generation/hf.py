"""On-policy sampling with HF `generate`, batched across prompts.

One `generate` call handles `batch_size` prompts x `n` samples (num_return_sequences), with
prompts sorted by length so left padding stays short. Each batch reseeds from (seed, batch
index), so a resumed run draws exactly the samples an uninterrupted one would.

In a multi-process launch the batches are dealt round-robin to the ranks and the answers
gathered: each batch is the one a single process would generate, under the same seed, so the
answers are those of one process (on the same hardware), whatever the number of processes.
Keep `batch_size` x processes at or below the number of prompts to keep every rank busy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stagealign import distributed
from stagealign.policy import Policy
from stagealign.seeds import batch_seed


@torch.inference_mode()
def sample(policy: Policy, prompts: list[str], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0,
           progress: Callable[[int], None] | None = None) -> list[list[str]]:
    """`n` sampled answers for each prompt (raw prompt text; the policy formats it)."""
    model, tok = policy.model, policy.tokenizer
    model.eval()
    texts = [policy.format(p) for p in prompts]
    lengths = [len(tok(t, add_special_tokens=not policy.uses_chat_template)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: list[list[str]] = [[] for _ in prompts]
    dev = next(model.parameters()).device
    rank, size = distributed.rank(), distributed.size()
    for b, start in enumerate(range(0, len(order), batch_size)):
        if b % size != rank:
            continue
        idx = order[start:start + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=not policy.uses_chat_template).to(dev)
        torch.manual_seed(batch_seed(seed, b))
        gen = model.generate(
            **enc, do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1]:]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        for j, i in enumerate(idx):
            out[i] = [s.strip() for s in decoded[j * n:(j + 1) * n]]
        if progress:
            progress(len(idx))
    if size > 1:
        for i, answers in distributed.gather([(i, a) for i, a in enumerate(out) if a]):
            out[i] = answers
    return out

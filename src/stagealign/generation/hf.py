"""On-policy sampling with HF `generate`, batched across prompts.

One `generate` call handles `batch_size` prompts x `n` samples (num_return_sequences), with
prompts sorted by length so left padding stays short. Each batch reseeds from (seed, batch
index), so a resumed run draws exactly the samples an uninterrupted one would.

A sample ends at the first of the model's end-of-turn tokens (`stop_ids`: every `eos_token_id` of
its generation_config plus the tokenizer's, the set vLLM stops on), or after `max_new_tokens`.
`generate` also returns the token ids each sample was drawn as, so that scoring a sample (the KL
estimate, `logprobs.answer_logprobs`) scores exactly those tokens rather than a re-tokenisation of
the decoded, stripped text.

In a multi-process launch the batches are dealt round-robin to the ranks and the answers
gathered: each batch is the one a single process would generate, under the same seed, so the
answers are those of one process (on the same hardware), whatever the number of processes.
Keep `batch_size` x processes at or below the number of prompts to keep every rank busy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from stagealign import distributed
from stagealign.artifacts import fault
from stagealign.generation import Done, OnBatch, PromptLike, Samples
from stagealign.policy import Policy
from stagealign.seeds import batch_seed


def stop_ids(policy: Policy) -> list[int]:
    """Every token that ends a sample: the generation_config's `eos_token_id` (one id or a list:
    Llama-3-Instruct lists <|end_of_text|> and <|eot_id|>) and the tokenizer's eos, in that order.

    HF `generate` reads only what it is given here; vLLM adds the generation_config's ids to the
    tokenizer's, so both engines stop on the same tokens.
    """
    configured = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(policy.tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    """The generated ids up to and including the first stop token (the padding after it dropped);
    all of them when the sample ran to max_new_tokens."""
    for j, token in enumerate(row):
        if token in stops:
            return row[:j + 1]
    return row


@torch.inference_mode()
def generate(policy: Policy, prompts: Sequence[PromptLike], *, n: int, temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0,
             progress: Callable[[int], None] | None = None, done: Done | None = None,
             on_batch: OnBatch | None = None) -> Samples:
    """`n` sampled answers for each prompt (raw prompt text; the policy formats it), with their token ids.

    Batches are fixed by the prompts' lengths and `batch_size`, and batch b is seeded by
    (seed, b): so a batch whose prompts are all in `done` (prompt index -> answers, ids: what an
    interrupted call reported through `on_batch`) is skipped and its samples reused, and the
    result equals an uninterrupted call's.
    """
    model, tok = policy.model, policy.tokenizer
    model.eval()
    texts = [policy.format(p) for p in prompts]
    lengths = [len(tok(t, add_special_tokens=not policy.uses_chat_template)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: list[list[str]] = [[] for _ in prompts]
    ids: list[list[list[int]]] = [[] for _ in prompts]
    dev = next(model.parameters()).device
    stops = stop_ids(policy)
    stop_set = set(stops)
    rank, size = distributed.rank(), distributed.size()
    for b, start in enumerate(range(0, len(order), batch_size)):
        if b % size != rank:
            continue
        idx = order[start:start + batch_size]
        if done is not None and all(i in done for i in idx):
            for i in idx:
                out[i], ids[i] = done[i]
            continue
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=not policy.uses_chat_template).to(dev)
        torch.manual_seed(batch_seed(seed, b))
        gen = model.generate(
            **enc, do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=stops,
        )
        new = [_until_stop(row, stop_set) for row in gen[:, enc["input_ids"].shape[1]:].tolist()]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        for j, i in enumerate(idx):
            out[i] = [s.strip() for s in decoded[j * n:(j + 1) * n]]
            ids[i] = new[j * n:(j + 1) * n]
        if on_batch is not None:
            on_batch(idx, [out[i] for i in idx], [ids[i] for i in idx])
        fault(f"sample-batch:{b}")  # test-only kill point (artifacts.fault)
        if progress:
            progress(len(idx))
    if size > 1:
        for i, answers, tokens in distributed.gather([(i, a, ids[i]) for i, a in enumerate(out) if a]):
            out[i], ids[i] = answers, tokens
    return Samples(texts=out, token_ids=ids)



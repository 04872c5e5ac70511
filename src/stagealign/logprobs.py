"""Log-probabilities of sampled answers under a policy (the KL estimate of `evaluate`).

What is scored: token ids, exactly as they were sampled (`generation.generate`'s `token_ids`,
ending with the end-of-turn token when the model stopped on one), after the prompt's own ids as
generation encoded them. Re-tokenising the decoded, stripped text instead would score a sequence
the model never produced (a space it did not generate, an EOS it never reached at
max_new_tokens, special tokens the decoder dropped).

Memory: full-vocabulary logits are never materialised. The model body runs once per batch and
TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, the head DPOTrainer trains the same
models with) projects tiles of positions x vocabulary and folds each into a float32 online
logsumexp, returning only the labelled tokens' log-probabilities. The plain computation needs
batch x length x vocabulary x 10 bytes for a bfloat16 model (the logits, their float32 copy and
its log-softmax): ~80 GB for 64 answers of ~1,000 tokens at Llama-3's 128,256-entry vocabulary
(bench/memory_real.py measures both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from stagealign.policy import Policy, is_peft_model

#: answers scored per forward pass (`evaluate`'s KL); the memory plan (`memory.py`) sizes this step with it
BATCH_SIZE = 64


@contextmanager
def fused_head(model) -> Iterator[None]:
    """TRL's fused LM head on `model` inside the block: `model(..., labels=..., fused_lm_head=True)`
    returns per-token log-probs (`.log_probs`, 0 where the label is -100) instead of logits.

    TRL patches `forward` on the instance (of the base model under PEFT, as DPOTrainer does);
    the patch is removed afterwards, so generation and later patches (DPOTrainer's) see the
    model as it was.
    """
    from trl.trainer.utils import add_fused_lm_head

    target = model.get_base_model() if is_peft_model(model) else model
    before = target.__dict__.get("forward")  # a patch already on the instance (a model TRL trained)
    add_fused_lm_head(target)
    try:
        yield
    finally:
        if before is None:
            del target.forward
        else:
            target.forward = before


def prompt_ids(policy: Policy, prompt) -> list[int]:
    """The ids generation conditions on: the formatted prompt, with the tokenizer's special tokens
    unless a chat template already wrote them."""
    return policy.tokenizer(policy.format(prompt), add_special_tokens=not policy.uses_chat_template)["input_ids"]


def _batch(model, contexts: list[list[int]], answers: list[list[int]], pad_id: int, device) -> list[float]:
    """One forward pass over right-padded prompt + answer rows, labelled on the answer tokens only.

    Right padding keeps every row's positions 0, 1, ... as in generation (which derives them from
    the attention mask), and under causal attention no real token sees the padding after it, so no
    attention mask is passed: SDPA then runs its causal kernel without a batch x length^2 mask.
    """
    rows = [c + a for c, a in zip(contexts, answers)]
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (c, a) in enumerate(zip(contexts, answers)):
        ids[i, :len(c) + len(a)] = torch.tensor(c + a, dtype=torch.long)
        if a:
            labels[i, len(c):len(c) + len(a)] = torch.tensor(a, dtype=torch.long)
    out = model(input_ids=ids.to(device), labels=labels.to(device), fused_lm_head=True)
    return out.log_probs.double().sum(-1).tolist()


@torch.inference_mode()
def sequence_logprobs(model, contexts: list[list[int]], answers: list[list[int]], *, pad_id: int = 0,
                      batch_size: int = BATCH_SIZE) -> list[float]:
    """sum_t log p(answer_t | context, answer_<t) under `model` for every (context ids, answer ids) row."""
    model.eval()
    dev = next(model.parameters()).device
    out: list[float] = []
    with fused_head(model):
        for start in range(0, len(contexts), batch_size):
            out += _batch(model, contexts[start:start + batch_size], answers[start:start + batch_size], pad_id, dev)
    return out


def answer_logprobs(policy: Policy, prompts: list, answers: list[list[int]],
                    batch_size: int = BATCH_SIZE) -> list[float]:
    """log pi(answer | prompt): the sum over each answer's sampled token ids, in input order."""
    pad = policy.tokenizer.pad_token_id
    return sequence_logprobs(policy.model, [prompt_ids(policy, p) for p in prompts], answers,
                             pad_id=pad if pad is not None else 0, batch_size=batch_size)

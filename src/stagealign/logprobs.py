"""Sequence log-probabilities of answers under a policy (for KL estimates and diagnostics)."""

from __future__ import annotations

import torch

from stagealign.policy import Policy


@torch.inference_mode()
def answer_logprobs(policy: Policy, prompts: list[str], answers: list[str], batch_size: int = 64) -> list[float]:
    """log pi(answer + eos | prompt) summed over answer tokens, in input order."""
    tok, model = policy.tokenizer, policy.model
    model.eval()
    dev = next(model.parameters()).device
    special = not policy.uses_chat_template
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        ctx = [policy.format(p) for p in prompts[start:start + batch_size]]
        full = [c + " " + a + tok.eos_token for c, a in zip(ctx, answers[start:start + batch_size])]
        n_ctx = [len(tok(c, add_special_tokens=special)["input_ids"]) for c in ctx]
        enc = tok(full, return_tensors="pt", padding=True, add_special_tokens=special).to(dev)
        logits = model(**enc).logits[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        lp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        width = enc["input_ids"].shape[1]
        pad = (enc["attention_mask"] == 0).sum(1)
        for i in range(len(full)):
            first = int(pad[i]) + n_ctx[i] - 1  # index in `target` of the first answer token
            out.append(float(lp[i, first:width - 1].sum()))
    return out

"""Hugging Face sequence-classification reward models as scalar judges.

A reward model here is any checkpoint that `AutoModelForSequenceClassification` loads with exactly
one output (``num_labels == 1``); ``logits[:, 0]`` is the score. The judge always uses the reward
model's *own* tokenizer (never the policy's):

* when that tokenizer has a chat template, the text is the template rendered over
  ``[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]`` and is
  tokenized without adding special tokens again (the template already holds them);
* otherwise the text is ``f"{prompt}\\n\\n{answer}"`` tokenized with the tokenizer's special tokens.

Truncation (explicit, to ``max_length`` tokens): the *beginning of the prompt* is cut first, so the
answer, which is what is being judged, and the template's framing tokens survive. Only when the
framing plus the answer alone exceed ``max_length`` is the end of the answer cut as well. Prompt
tokens are located through the fast tokenizer's offset mapping; with a slow tokenizer (no offsets)
the whole sequence is cut from the left, keeping its leading special tokens.

Batches are sorted by length (less padding), right-padded, scored under ``torch.inference_mode``
and returned in the input order.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from stagealign.hub import is_hub_name
from stagealign.judges.base import Judge

_HEAD_HINTS = ("SequenceClassification", "Reward", "Classifier", "Classification")


def resolve_dtype(dtype: Any):
    """None / "auto" / "float32" / "bfloat16" / "float16" / torch.dtype -> what from_pretrained takes."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
        name = aliases.get(name, name)
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    raise ValueError(f"unknown dtype {dtype!r}; use a torch dtype, 'float32', 'bfloat16', 'float16' or 'auto'")


def resolve_device(device: Any) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


class RewardModelJudge(Judge):
    """Scalar judge backed by a Hugging Face sequence-classification reward model (one logit)."""

    def __init__(
        self,
        path_or_name: str | os.PathLike,
        *,
        batch_size: int = 16,
        max_length: int = 1024,
        device: str | None = None,
        dtype: Any = None,
        temperature: float = 1.0,
        trust_remote_code: bool = False,
        name: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.path = str(path_or_name)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.temperature = float(temperature)
        self.device = resolve_device(device)
        self.name = name or f"reward_model:{os.path.basename(self.path.rstrip('/')) or self.path}"
        self.model, self.tokenizer = self._load(resolve_dtype(dtype), trust_remote_code)
        self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))

    def __repr__(self) -> str:
        return (f"RewardModelJudge(path={self.path!r}, batch_size={self.batch_size}, "
                f"max_length={self.max_length}, device={self.device!r})")

    # ------------------------------------------------------------------ loading
    def _load(self, dtype, trust_remote_code: bool):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = self.path
        if not is_hub_name(path, legacy=True):  # a directory we must find on disk
            path = os.path.expanduser(path)
            if not os.path.isdir(path):
                raise ValueError(f"reward model path {self.path!r} does not exist (or is not a directory)")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a model config from {self.path!r}: {exc}") from None
        archs = list(getattr(config, "architectures", None) or [])
        if archs and not any(h in a for a in archs for h in _HEAD_HINTS):
            raise ValueError(
                f"{self.path!r} is not a sequence-classification reward model (architectures={archs}); "
                "a reward model needs a scalar head (e.g. ...ForSequenceClassification with num_labels=1)")
        if getattr(config, "num_labels", None) != 1:
            raise ValueError(f"{self.path!r} has num_labels={getattr(config, 'num_labels', None)}; "
                             "a reward model must have exactly one output (num_labels=1)")
        kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code,
                                  "output_loading_info": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load {self.path!r} as a sequence-classification reward model "
                             f"(safetensors weights required): {exc}") from None
        prefix = getattr(model, "base_model_prefix", "") or ""
        head_missing = [k for k in info.get("missing_keys", []) if not (prefix and k.startswith(prefix + "."))]
        if head_missing:
            raise ValueError(f"{self.path!r} has no trained reward head in its weights "
                             f"(missing {sorted(head_missing)[:4]}); it is not a reward model")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load the reward model's own tokenizer from {self.path!r}: {exc}") from None
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"tokenizer of {self.path!r} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        # HF sequence classifiers pool at the last token that is not the *config's* pad id, so
        # the config must have one (batches > 1) and padding must use that very id.
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        for cfg in (model.config, text_config):
            if getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = tokenizer.pad_token_id
        self._pad_id = int(text_config.pad_token_id)
        model.to(self.device)
        model.eval()
        return model, tokenizer

    # ------------------------------------------------------------------ encoding
    def _render(self, prompt: str, answer: str) -> tuple[str, bool]:
        """Text for (prompt, answer) and whether the tokenizer should add special tokens."""
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return text, False
        return f"{prompt}\n\n{answer}", True

    def encode(self, prompt: str, answer: str) -> list[int]:
        """Token ids for one (prompt, answer), at most `max_length` long (see module doc)."""
        text, add_special = self._render(prompt, answer)
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            ids = list(tok(text, add_special_tokens=add_special)["input_ids"])
            if len(ids) <= self.max_length:
                return ids
            n_lead = 0
            special = set(tok.all_special_ids)
            while n_lead < len(ids) and ids[n_lead] in special:
                n_lead += 1
            n_lead = min(n_lead, self.max_length - 1)
            return ids[:n_lead] + ids[len(ids) - (self.max_length - n_lead):]
        enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=True,
                  return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        excess = len(ids) - self.max_length
        if excess <= 0:
            return ids
        offsets = enc["offset_mapping"]
        special_ids = set(tok.all_special_ids)
        # special tokens, whether added by the tokenizer or written by the chat template, are kept
        special = [bool(m) or i in special_ids for m, i in zip(enc["special_tokens_mask"], ids)]

        def span(begin: int, end: int) -> list[int]:
            return [t for t, (s, e) in enumerate(offsets) if not special[t] and e > s and s >= begin and e <= end]

        p_start = text.find(prompt) if prompt else -1
        p_end = p_start + len(prompt) if p_start >= 0 else 0
        drop: set[int] = set()
        if p_start >= 0:
            drop.update(span(p_start, p_end)[:excess])
            excess -= len(drop)
        if excess > 0:  # framing + answer alone are too long: cut the end of the answer
            a_start = text.find(answer, p_end) if answer else -1
            tail = span(a_start, a_start + len(answer)) if a_start >= 0 else []
            if len(tail) < excess:  # answer not found verbatim: last non-special tokens
                tail = [t for t in range(len(ids)) if not special[t] and t not in drop]
            cut = tail[len(tail) - excess:] if excess <= len(tail) else tail
            drop.update(cut)
            excess -= len(cut)
        ids = [i for t, i in enumerate(ids) if t not in drop]
        return ids[-self.max_length:] if len(ids) > self.max_length else ids

    # ------------------------------------------------------------------ scoring
    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        import torch

        n = len(answers)
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        encoded = [self.encode(p, a) for p, a in zip(prompts, answers)]
        order = sorted(range(n), key=lambda i: len(encoded[i]), reverse=True)
        pad_id = self._pad_id
        with torch.inference_mode():
            for b in range(0, n, self.batch_size):
                idx = order[b:b + self.batch_size]
                width = max(len(encoded[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids = encoded[i]
                    input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[r, :len(ids)] = 1
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention.to(self.device)).logits
                if logits.ndim != 2 or logits.shape[-1] != 1:
                    raise ValueError(f"reward model {self.path!r} returned logits of shape "
                                     f"{tuple(logits.shape)}; expected (batch, 1)")
                out[idx] = logits[:, 0].float().cpu().numpy()
        return out

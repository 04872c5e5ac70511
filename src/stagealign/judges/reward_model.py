"""Hugging Face sequence-classification reward models as scalar judges.

A reward model here is any checkpoint that `AutoModelForSequenceClassification` loads. Which number
is the score:

* by default the model's only output: ``logits[:, 0]`` of a head with ``num_labels == 1``;
* ``head: k``: column ``k`` of the logits of a multi-output head (``num_labels > 1``);
* ``output: name``: the field ``name`` of the model's output object, for custom heads whose
  preference score is not the logits (ArmoRM's gated mixture of 19 objectives is
  ``outputs.score``; its code needs ``trust_remote_code: true``, which stays the user's choice);
  ``head`` then picks a column of that field when it has several.

The judge always uses the reward model's *own* tokenizer (never the policy's):

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
and returned in the input order. Where the score is read: see `RewardModelJudge.pad_id_for`.
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
    """Scalar judge backed by a Hugging Face sequence-classification reward model (see the module doc
    for which output is the score: the only logit, `head`, or `output`)."""

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
        output: str | None = None,
        head: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if output is not None and not (isinstance(output, str) and output.isidentifier()):
            raise ValueError(f"output must name a field of the model's output (e.g. 'score'), got {output!r}")
        if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 0):
            raise ValueError(f"head must be a column index >= 0 (e.g. 0), got {head!r}")
        self.output = output
        self.head = head
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
        self._check_head(getattr(config, "num_labels", None))
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
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self._configs = (model.config, text_config)
        own = getattr(text_config, "pad_token_id", None)
        own = own if own is not None else tokenizer.pad_token_id
        self._own_pad = None if own is None else int(own)  # None: the checkpoint defines no pad token
        if self._own_pad is not None:
            self._set_pad(self._own_pad)
        model.to(self.device)
        model.eval()
        return model, tokenizer

    def _check_head(self, num_labels) -> None:
        """Refuse, in one line, a head that cannot give one score: several logits and nothing saying
        which is the score, or a `head` beyond the logits. With `output` the logits are not read."""
        if self.output is not None:
            return
        if self.head is None and num_labels != 1:
            raise ValueError(
                f"{self.path!r} has num_labels={num_labels}: name the score with the judge option `head: <column>` "
                "(0..num_labels-1) or `output: <field>` (a field of the model's output, e.g. ArmoRM's `score`)")
        if self.head is not None and isinstance(num_labels, int) and self.head >= num_labels:
            raise ValueError(f"judge option head: {self.head} is out of range: {self.path!r} has "
                             f"num_labels={num_labels} (heads 0..{num_labels - 1})")

    def _set_pad(self, pad_id: int) -> None:
        """Make `pad_id` the pad id the model's pooling looks for (top-level and text config: HF reads
        the text config's, older and custom heads such as ArmoRM's read the top-level one)."""
        for cfg in self._configs:
            cfg.pad_token_id = pad_id

    def pad_id_for(self, rows: list[list[int]]) -> int:
        """The id a batch of `rows` is right-padded with, set as the model's pad id for its forward.

        HF's sequence-classification heads read the score at the last token that is not the
        config's pad id (transformers 5: the rightmost non-pad token; 4.x and custom heads such as
        ArmoRM's: the token before the first pad). A checkpoint that defines a pad token (tokenizer
        or config) keeps it: the head was trained pooling on that id. One that defines none used
        to be padded with EOS, as such tokenizers are usually patched; then a text ending in EOS
        (most chat templates) was scored at the token before its EOS, and with an EOS per turn,
        under the first-pad rule, at the end of the first turn. Instead each such batch is padded
        with an id that occurs in none of its rows: under both rules the score is then read at the
        last attention-mask token of every row, the same as scoring the row alone without padding.
        The padding id's embedding never reaches a real token (right padding, masked out).
        """
        if self._own_pad is not None:
            return self._own_pad
        used = set().union(*rows)
        free = next((i for i in range(len(self.tokenizer)) if i not in used), None)
        if free is None:
            raise ValueError(f"reward model {self.path!r}: no token id is free to pad this batch with")
        self._set_pad(free)
        return free

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
        with torch.inference_mode():
            for b in range(0, n, self.batch_size):
                idx = order[b:b + self.batch_size]
                pad_id = self.pad_id_for([encoded[i] for i in idx])
                width = max(len(encoded[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids = encoded[i]
                    input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[r, :len(ids)] = 1
                outputs = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device))
                out[idx] = self._pick(outputs, len(idx)).float().cpu().numpy()
        return out

    def _pick(self, outputs, batch: int):
        """The score of each row of a forward pass: the field `output` (default `logits`), then its
        column `head` (default: its only column); one clear line when the model gives no such thing."""
        import torch

        field = self.output or "logits"
        value = getattr(outputs, field, None)
        if value is None and isinstance(outputs, dict):
            value = outputs.get(field)
        if not isinstance(value, torch.Tensor):
            fields = ", ".join(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(f"reward model {self.path!r} has no output field {field!r} (judge option output); "
                             f"its output has: {fields}")
        if value.ndim == 2 and value.shape[0] == batch:
            if self.head is None and value.shape[1] != 1:
                raise ValueError(f"reward model {self.path!r} returned {field} of shape {tuple(value.shape)}; "
                                 "choose the score's column with the judge option head")
            column = 0 if self.head is None else self.head
            if column >= value.shape[1]:
                raise ValueError(f"judge option head: {self.head} is out of range: {field} of {self.path!r} "
                                 f"has {value.shape[1]} columns")
            return value[:, column]
        if value.ndim == 1 and value.shape[0] == batch:
            if self.head not in (None, 0):
                raise ValueError(f"judge option head: {self.head} is out of range: {field} of {self.path!r} "
                                 "is one score per row")
            return value
        raise ValueError(f"reward model {self.path!r} returned {field} of shape {tuple(value.shape)}; "
                         f"expected ({batch},) or ({batch}, columns)")

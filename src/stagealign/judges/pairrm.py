"""PairRM (llm-blender) as a pairwise-only judge, without needing the `llm-blender` package.

Architecture (mirrors ``llm_blender.pair_ranker.pairrm.DebertaV2PairRM``, same parameter names, so
the ``llm-blender/PairRM-hf`` safetensors checkpoint loads as is):

* ``pretrained_model``: a DeBERTa-v2/v3 encoder (``DebertaV2Model``);
* input ids: ``[CLS] <|source|> prompt [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]``
  (each segment encoded separately with the tokenizer's special tokens, then concatenated);
* the last hidden states at the ``<|source|>``, ``<|candidate1|>`` and ``<|candidate2|>`` tokens
  give ``left = head_layer([h_src; h_c1])`` and ``right = head_layer([h_src; h_c2])`` with
  ``head_layer = Sequential(Dropout, Linear(2H, H), Tanh, Dropout, Linear(H, n_tasks))``;
* the logit for "a beats b" is ``(left - right).mean(-1)``.

Truncation follows the PairRM-hf model card: the prompt segment is cut to ``source_max_length``
tokens (its *end* is dropped, as PairRM was trained), then each candidate to
``(max_length - len(prompt segment)) // 2`` tokens (their ends are dropped).

`PairRMJudge._prob` is symmetrised: ``P(a > b) = (sigmoid(f(a, b)) + 1 - sigmoid(f(b, a))) / 2``,
so ``P(a > b) + P(b > a) = 1`` and the position bias of the ranker cancels out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from transformers import DebertaV2Model, DebertaV2PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from stagealign.hub import is_hub_name
from stagealign.judges.base import Judge, JudgeError
from stagealign.judges.reward_model import resolve_device, resolve_dtype

SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
PREFIX_TOKENS = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)
DEFAULT_PAIRRM = "llm-blender/PairRM-hf"


class DebertaV2PairRM(DebertaV2PreTrainedModel):
    """Pairwise reward model head over a DeBERTa-v2 encoder (llm-blender's PairRM layout).

    Extra config fields (as in PairRM-hf's config.json): ``n_tasks``, ``drop_out``,
    ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``, ``cand_prefix_id``.
    """

    base_model_prefix = "pretrained_model"

    def __init__(self, config):
        super().__init__(config)
        self.n_tasks = int(getattr(config, "n_tasks", 1))
        self.drop_out = float(getattr(config, "drop_out", 0.05))
        self.pretrained_model = DebertaV2Model(config)
        self.hidden_size = config.hidden_size
        self.sep_token_id = getattr(config, "sep_token_id", None)
        self.source_prefix_id = getattr(config, "source_prefix_id", None)
        self.cand_prefix_id = getattr(config, "cand_prefix_id", None)
        self.cand1_prefix_id = getattr(config, "cand1_prefix_id", None)
        self.cand2_prefix_id = getattr(config, "cand2_prefix_id", None)
        self.head_layer = nn.Sequential(
            nn.Dropout(self.drop_out),
            nn.Linear(2 * self.hidden_size, 1 * self.hidden_size),
            nn.Tanh(),
            nn.Dropout(self.drop_out),
            nn.Linear(1 * self.hidden_size, self.n_tasks),
        )
        self.sigmoid = nn.Sigmoid()
        self.post_init()

    def _positions(self, input_ids: torch.Tensor, token_id: int | None, what: str) -> torch.Tensor:
        if token_id is None:
            raise ValueError(f"config has no {what} id; PairRM needs source/cand1/cand2 prefix ids")
        hits = input_ids == token_id
        counts = hits.sum(dim=1)
        if not bool((counts == 1).all()):
            bad = int(torch.nonzero(counts != 1)[0, 0])
            raise ValueError(f"row {bad} holds {int(counts[bad])} {what} tokens; exactly one is required")
        return hits.int().argmax(dim=1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if input_ids is None:
            raise ValueError("DebertaV2PairRM needs input_ids (prefix token positions are read from them)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Drop columns that are padding in every row (as llm-blender does).
        keep = attention_mask.ne(0).any(dim=0)
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        if token_type_ids is not None:
            token_type_ids = token_type_ids[:, keep]
        if position_ids is not None:
            position_ids = position_ids[:, keep]
        src = self._positions(input_ids, self.source_prefix_id, "<|source|>")
        c1 = self._positions(input_ids, self.cand1_prefix_id, "<|candidate1|>")
        c2 = self._positions(input_ids, self.cand2_prefix_id, "<|candidate2|>")
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, position_ids=position_ids,
                                    return_dict=True)
        encs = out.last_hidden_state
        rows = torch.arange(encs.shape[0], device=encs.device)
        h_src, h_c1, h_c2 = encs[rows, src], encs[rows, c1], encs[rows, c2]
        left = self.head_layer(torch.cat([h_src, h_c1], dim=-1))
        right = self.head_layer(torch.cat([h_src, h_c2], dim=-1))
        return SequenceClassifierOutput(logits=(left - right).mean(dim=-1))


# ---------------------------------------------------------------------------- ranking helpers
def best_worst_tournament(compare: Callable[[list[tuple[int, int]]], np.ndarray], n: int,
                          ) -> tuple[int, int, int]:
    """Best and worst of `n` items with about 3n/2 comparisons, in O(log n) batched rounds.

    `compare(pairs)` returns P(i > j) for each (i, j). Round 1 pairs the items up (n/2 comparisons);
    winners enter a single-elimination bracket for the best, losers one for the worst (a bye goes to
    both), and each round of both brackets is one `compare` call. Total: ceil(n/2) + (w - 1) + (l - 1)
    comparisons, w and l being the bracket sizes, i.e. at most ~3n/2 - 2 (the min-max algorithm).
    P >= 0.5 counts as a win for i. Exact when preferences are transitive (the best never loses, the
    worst never wins); otherwise a cheap heuristic. Returns (best, worst, comparisons made).
    """
    if n < 1:
        raise ValueError("need at least one candidate")
    if n == 1:
        return 0, 0, 0
    items = list(range(n))
    pairs = [(items[k], items[k + 1]) for k in range(0, n - 1, 2)]
    p = np.asarray(compare(pairs), dtype=np.float64).reshape(-1)
    used = len(pairs)
    winners = [i if pk >= 0.5 else j for (i, j), pk in zip(pairs, p)]
    losers = [j if pk >= 0.5 else i for (i, j), pk in zip(pairs, p)]
    if n % 2:
        winners.append(items[-1])
        losers.append(items[-1])
    while len(winners) > 1 or len(losers) > 1:
        wp = [(winners[k], winners[k + 1]) for k in range(0, len(winners) - 1, 2)]
        lp = [(losers[k], losers[k + 1]) for k in range(0, len(losers) - 1, 2)]
        p = np.asarray(compare(wp + lp), dtype=np.float64).reshape(-1)
        used += len(wp) + len(lp)
        new_w = [i if pk >= 0.5 else j for (i, j), pk in zip(wp, p[:len(wp)])]
        new_l = [j if pk >= 0.5 else i for (i, j), pk in zip(lp, p[len(wp):])]
        if len(winners) % 2:
            new_w.append(winners[-1])
        if len(losers) % 2:
            new_l.append(losers[-1])
        winners, losers = new_w, new_l
    return winners[0], losers[0], used


def comparison_matrix(judge: Judge, prompt: str, candidates: Sequence[str]) -> np.ndarray:
    """N x N matrix M[i, j] = P(c_i > c_j) from any judge (n(n-1)/2 `prob` calls in one batch).

    The upper triangle is judged; M[j, i] = 1 - M[i, j] and the diagonal is 0.5.
    """
    n = len(candidates)
    m = np.full((n, n), 0.5)
    iu, ju = np.triu_indices(n, k=1)
    if len(iu):
        p = judge.prob([prompt] * len(iu), [candidates[i] for i in iu], [candidates[j] for j in ju])
        m[iu, ju] = p
        m[ju, iu] = 1.0 - p
    return m


def rank_best_worst(judge: Judge, prompt: str, candidates: Sequence[str]) -> tuple[int, int]:
    """(best index, worst index) among `candidates` with O(N) `judge.prob` comparisons."""
    cands = list(candidates)

    def compare(pairs: list[tuple[int, int]]) -> np.ndarray:
        if not pairs:
            return np.empty(0)
        return judge.prob([prompt] * len(pairs), [cands[i] for i, _ in pairs], [cands[j] for _, j in pairs])

    best, worst, _ = best_worst_tournament(compare, len(cands))
    return best, worst


# ---------------------------------------------------------------------------- the judge
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


class PairRMJudge(Judge):
    """Pairwise-only judge over a PairRM checkpoint (PairRM-hf layout, safetensors)."""

    pairwise_only = True

    def __init__(
        self,
        path: str | os.PathLike = DEFAULT_PAIRRM,
        batch_size: int = 8,
        max_length: int = 2048,
        device: str | None = None,
        *,
        source_max_length: int = 1224,
        dtype: Any = None,
        symmetric: bool = True,
        name: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 3 <= source_max_length <= max_length - 6:
            raise ValueError(f"need 3 <= source_max_length ({source_max_length}) <= max_length - 6 "
                             f"(max_length={max_length}) so that every segment keeps its prefix token")
        self.path = str(path)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.source_max_length = int(source_max_length)
        self.symmetric = bool(symmetric)
        self.device = resolve_device(device)
        self.name = name or f"pairrm:{os.path.basename(self.path.rstrip('/')) or self.path}"
        self.model, self.tokenizer = self._load(resolve_dtype(dtype))

    def __repr__(self) -> str:
        return (f"PairRMJudge(path={self.path!r}, batch_size={self.batch_size}, "
                f"max_length={self.max_length}, device={self.device!r})")

    def _load(self, dtype):
        from transformers import AutoTokenizer

        path = self.path
        if not is_hub_name(path, legacy=True):  # a directory we must find on disk
            path = os.path.expanduser(path)
            if not os.path.isdir(path):
                raise ValueError(f"PairRM path {self.path!r} does not exist (or is not a directory)")
        kwargs: dict[str, Any] = {"use_safetensors": True, "output_loading_info": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            model, info = DebertaV2PairRM.from_pretrained(path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load PairRM from {self.path!r} (PairRM-hf layout, safetensors): {exc}") from None
        missing = [k for k in info.get("missing_keys", []) if k.startswith("head_layer.")]
        if missing:
            raise ValueError(f"{self.path!r} has no PairRM head in its weights (missing {missing}); "
                             "is it a PairRM-hf checkpoint?")
        ids = tokenizer.convert_tokens_to_ids(list(PREFIX_TOKENS[:3]))
        unk = tokenizer.unk_token_id
        if any(i is None or i == unk for i in ids):
            raise ValueError(f"tokenizer of {self.path!r} lacks the PairRM prefix tokens {PREFIX_TOKENS[:3]}")
        for attr, tid in zip(("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id"), ids):
            cfg_id = getattr(model.config, attr, None)
            if cfg_id is None:
                setattr(model.config, attr, tid)
                setattr(model, attr, tid)
            elif cfg_id != tid:
                raise ValueError(f"{self.path!r}: config {attr}={cfg_id} but the tokenizer maps it to {tid}")
        model.to(self.device)
        model.eval()
        return model, tokenizer

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def _clean(text: str) -> str:
        for t in PREFIX_TOKENS:  # user text must not fake the prefix tokens
            text = text.replace(t, " ")
        return text

    def encode(self, prompt: str, a: str, b: str) -> list[int]:
        tok = self.tokenizer
        src = tok.encode(SOURCE_PREFIX + self._clean(prompt), max_length=self.source_max_length, truncation=True)
        cand_max = (self.max_length - len(src)) // 2
        c1 = tok.encode(CAND1_PREFIX + self._clean(a), max_length=cand_max, truncation=True)
        c2 = tok.encode(CAND2_PREFIX + self._clean(b), max_length=cand_max, truncation=True)
        return list(src) + list(c1) + list(c2)

    def logits(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Raw (one-order) PairRM logits f(a, b); positive means a is preferred."""
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        n = len(prompts)
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        encoded = [self.encode(p, x, y) for p, x, y in zip(prompts, a, b)]
        order = sorted(range(n), key=lambda i: len(encoded[i]), reverse=True)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                idx = order[s:s + self.batch_size]
                width = max(len(encoded[i]) for i in idx)
                input_ids = torch.full((len(idx), width), int(pad_id), dtype=torch.long)
                attention = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    input_ids[r, :len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                    attention[r, :len(encoded[i])] = 1
                try:
                    res = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device))
                except ValueError as exc:
                    raise JudgeError(f"judge {self.name!r}: {exc}") from None
                out[idx] = res.logits.float().reshape(-1).cpu().numpy()
        return out

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        if not self.symmetric:
            return _sigmoid(self.logits(prompts, a, b))
        z = self.logits(prompts + prompts, a + b, b + a)  # both orders in one pass
        n = len(prompts)
        return 0.5 * (_sigmoid(z[:n]) + 1.0 - _sigmoid(z[n:]))

    # ------------------------------------------------------------------ ranking
    def rank_best_worst(self, prompt: str, candidates: Sequence[str]) -> tuple[int, int]:
        """(best, worst) indices with ~3N/2 symmetrised comparisons (see `best_worst_tournament`)."""
        return rank_best_worst(self, prompt, candidates)

    def matrix(self, prompt: str, candidates: Sequence[str]) -> np.ndarray:
        """Full N x N P(c_i > c_j) matrix (N(N-1)/2 symmetrised comparisons; for small N)."""
        return comparison_matrix(self, prompt, candidates)

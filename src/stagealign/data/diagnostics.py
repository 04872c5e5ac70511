"""Candidate-set and preference-pair diagnostics: intra-diversity and answer quality.

The paper characterises preference data by the *intra-diversity* of a prompt's candidates (how
different they are from each other) and their *answer quality* (judge scores). Reviewers asked
for diversity to be measured more than one way, so this module offers several views, each
cheap and dependency-free (pure Python + numpy):

- ``distinct_n``          share of distinct n-grams among all n-grams of one prompt's candidates
                          (higher = more diverse; depends on answer length, compare like with like)
- ``ngram_overlap``       mean pairwise Jaccard overlap of n-gram sets (higher = *less* diverse);
                          ``ngram_diversity = 1 - ngram_overlap``
- ``edit_diversity``      mean pairwise token-level Levenshtein distance normalised by the longer
                          answer (0 = identical, 1 = nothing in common)
- ``embedding_dispersion`` mean pairwise cosine distance of embeddings; only with an ``embed``
                          function (e.g. a sentence encoder), since it needs a model
- ``quality``             mean / std / min / max / spread of one prompt's judge scores

``diagnose_sets`` aggregates the per-prompt values into means with a normal 95% interval over
prompts; ``diagnose_pairs`` summarises a pairs file (edit distance chosen vs rejected, margins,
origin shares and the chosen-vs-rejected length bias that DPO is sensitive to). Every returned
value is a plain ``float``/``int``/``str``/``None``/``list``/``dict``, so ``json.dumps`` works.

Texts are whitespace-tokenised by default; every function takes ``tokenize`` to use another
tokenizer (e.g. ``hf_tokenizer.tokenize``). Pairwise and intra-set metrics need at least two
candidates: sets with fewer are skipped for them and counted under ``skipped_single``.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .schema import ORIGINS, CandidateSet, PreferencePair

Tokenizer = Callable[[str], list[str]]
Embedder = Callable[[list[str]], np.ndarray]

#: Answers are truncated to this many tokens before the edit-distance DP, which costs
#: O(len_a * len_b) per pair; at 256 tokens a 4-candidate prompt (6 pairs) takes ~15-20 ms.
DEFAULT_EDIT_MAX_TOKENS = 256
#: n-gram orders reported by ``diagnose_sets`` for distinct-n.
DEFAULT_DISTINCT_NS: tuple[int, ...] = (1, 2)
#: z-value of the two-sided normal 95% interval.
Z95 = 1.959963984540054
#: How many texts ``diagnose_sets`` hands to ``embed`` per call (whole sets are never split).
EMBED_BATCH_TEXTS = 512

__all__ = [
    "DEFAULT_DISTINCT_NS",
    "DEFAULT_EDIT_MAX_TOKENS",
    "whitespace_tokenize",
    "ngrams",
    "distinct_n",
    "ngram_overlap",
    "ngram_diversity",
    "levenshtein",
    "normalized_edit_distance",
    "edit_diversity",
    "embedding_dispersion",
    "quality",
    "mean_ci",
    "diagnose_sets",
    "diagnose_pairs",
]


# --------------------------------------------------------------------------- tokens / n-grams


def whitespace_tokenize(text: str) -> list[str]:
    """The default tokenizer: ``str.split()`` (runs of whitespace separate tokens)."""
    return text.split()


def _tok(tokenize: Tokenizer | None) -> Tokenizer:
    return tokenize if tokenize is not None else whitespace_tokenize


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty when there are fewer than ``n`` tokens)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 1, tokenize: Tokenizer | None = None) -> float:
    """Distinct n-grams / total n-grams, pooled over one prompt's candidates.

    ``k`` identical candidates whose tokens are all different give ``1/k``; candidates with no
    n-gram in common (and no repeats inside them) give 1. Returns ``nan`` when the texts hold
    no n-gram at all (every text shorter than ``n`` tokens).
    """
    tok = _tok(tokenize)
    return _distinct_tokens([tok(t) for t in texts], n)


def _distinct_tokens(toks: Sequence[Sequence[str]], n: int) -> float:
    total = 0
    seen: set[tuple[str, ...]] = set()
    for tokens in toks:
        grams = ngrams(tokens, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else float("nan")


def _jaccard(a: set, b: set) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _ngram_set(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    grams = set(ngrams(tokens, n))
    # A text shorter than n has no n-gram; fall back to the whole (short) token sequence so
    # that e.g. two different one-word answers are not counted as identical.
    if not grams and tokens:
        grams = {tuple(tokens)}
    return grams


def ngram_overlap(texts: Sequence[str], n: int = 2, tokenize: Tokenizer | None = None) -> float:
    """Mean pairwise Jaccard overlap of the candidates' n-gram sets (higher = less diverse).

    1 for identical candidates, 0 for candidates sharing no n-gram. A text shorter than ``n``
    tokens is represented by its whole token sequence; two empty texts overlap fully. Returns
    ``nan`` for fewer than two texts.
    """
    tok = _tok(tokenize)
    return _overlap_tokens([tok(t) for t in texts], n)


def _overlap_tokens(toks: Sequence[Sequence[str]], n: int) -> float:
    if len(toks) < 2:
        return float("nan")
    sets = [_ngram_set(t, n) for t in toks]
    return float(np.mean([_jaccard(a, b) for a, b in combinations(sets, 2)]))


def ngram_diversity(texts: Sequence[str], n: int = 2, tokenize: Tokenizer | None = None) -> float:
    """``1 - ngram_overlap``: 0 for identical candidates, 1 for fully disjoint ones."""
    return 1.0 - ngram_overlap(texts, n=n, tokenize=tokenize)


# --------------------------------------------------------------------------- edit distance


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (unit insert / delete / substitute) between two token sequences.

    The classic O(len(a) * len(b)) dynamic programme, one numpy row at a time: the within-row
    insertion chain ``cur[j] = min(cur[j], cur[j-1] + 1)`` is a running minimum of
    ``cur[j] - j`` shifted back by ``j``, so each row is a few vector operations.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    vocab: dict[Any, int] = {}
    a_ids = [vocab.setdefault(t, len(vocab)) for t in a]
    b_ids = np.array([vocab.setdefault(t, len(vocab)) for t in b], dtype=np.int64)
    m = len(b_ids)
    idx = np.arange(m + 1, dtype=np.int64)
    prev = idx.copy()
    cur = np.empty(m + 1, dtype=np.int64)
    for i, ai in enumerate(a_ids, start=1):
        cur[0] = i
        # deletion (from the row above) or substitution/match (diagonal)
        np.minimum(prev[1:] + 1, prev[:-1] + (b_ids != ai), out=cur[1:])
        # insertion chain along the row
        cur[:] = np.minimum.accumulate(cur - idx) + idx
        prev, cur = cur, prev
    return int(prev[m])


def normalized_edit_distance(
    a: str,
    b: str,
    tokenize: Tokenizer | None = None,
    max_tokens: int | None = DEFAULT_EDIT_MAX_TOKENS,
) -> float:
    """Token-level Levenshtein distance divided by the longer length, in [0, 1].

    Both texts are truncated to their first ``max_tokens`` tokens first (``None`` = no cap).
    Two empty texts are at distance 0.
    """
    tok = _tok(tokenize)
    return _norm_edit(tok(a), tok(b), max_tokens)


def edit_diversity(
    texts: Sequence[str],
    tokenize: Tokenizer | None = None,
    max_tokens: int | None = DEFAULT_EDIT_MAX_TOKENS,
) -> float:
    """Mean pairwise normalised token-level edit distance (0 = identical candidates).

    Answers are capped at ``max_tokens`` tokens (default ``DEFAULT_EDIT_MAX_TOKENS``) to bound
    the quadratic cost. Returns ``nan`` for fewer than two texts.
    """
    tok = _tok(tokenize)
    return _edit_tokens([tok(t) for t in texts], max_tokens)


def _norm_edit(ta: Sequence[str], tb: Sequence[str], max_tokens: int | None) -> float:
    if max_tokens is not None:
        ta, tb = ta[:max_tokens], tb[:max_tokens]
    longest = max(len(ta), len(tb))
    return levenshtein(ta, tb) / longest if longest else 0.0


def _edit_tokens(toks: Sequence[Sequence[str]], max_tokens: int | None) -> float:
    if len(toks) < 2:
        return float("nan")
    return float(np.mean([_norm_edit(a, b, max_tokens) for a, b in combinations(toks, 2)]))


# --------------------------------------------------------------------------- embeddings


def _pairwise_cosine_distance(vectors: np.ndarray) -> float:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n_texts, dim), got shape {x.shape}")
    k = x.shape[0]
    if k < 2:
        return float("nan")
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    unit = x / np.where(zero, 1.0, norms)[:, None]
    dist = 1.0 - unit @ unit.T
    # A zero vector has no direction: two of them are "the same", one vs non-zero is distance 1.
    both = zero[:, None] & zero[None, :]
    one = zero[:, None] ^ zero[None, :]
    dist[both] = 0.0
    dist[one] = 1.0
    dist = np.clip(dist, 0.0, 2.0)
    iu = np.triu_indices(k, 1)
    return float(dist[iu].mean())


def embedding_dispersion(texts: Sequence[str], embed: Embedder) -> float:
    """Mean pairwise cosine distance (``1 - cos``) of ``embed(texts)``, in [0, 2].

    ``embed`` maps a list of ``n`` texts to an ``(n, dim)`` array. 0 for identical texts;
    ``nan`` for fewer than two texts.
    """
    if len(texts) < 2:
        return float("nan")
    vectors = np.asarray(embed(list(texts)))
    if vectors.shape[0] != len(texts):
        raise ValueError(f"embed returned {vectors.shape[0]} vectors for {len(texts)} texts")
    return _pairwise_cosine_distance(vectors)


# --------------------------------------------------------------------------- quality


def quality(scores: Sequence[float]) -> dict[str, float]:
    """Judge-score summary of one prompt's candidates: mean, std (population), min, max and
    spread (= max - min, the margin a max-min pairing would get)."""
    arr = np.asarray(list(scores), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("quality() needs at least one score")
    lo, hi = float(arr.min()), float(arr.max())
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": lo,
        "max": hi,
        "spread": hi - lo,
    }


# --------------------------------------------------------------------------- aggregation


def mean_ci(values: Iterable[float]) -> dict[str, Any]:
    """Mean of the finite ``values`` with a normal 95% interval ``mean +- 1.96 * sd / sqrt(n)``.

    Returns ``{"mean", "ci95": [lo, hi], "std", "n"}``; ``mean`` is ``None`` when no value is
    finite and ``ci95`` is ``None`` for fewer than two values.
    """
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return {"mean": None, "ci95": None, "std": None, "n": 0}
    mean = float(arr.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "std": None, "n": 1}
    sd = float(arr.std(ddof=1))
    half = Z95 * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "std": sd, "n": n}


def _as_set(item: CandidateSet | Mapping[str, Any]) -> CandidateSet:
    if isinstance(item, CandidateSet):
        return item
    if isinstance(item, Mapping):
        return CandidateSet.from_row(dict(item))
    raise TypeError(f"expected CandidateSet or dict, got {type(item).__name__}")


def diagnose_sets(
    sets: Iterable[CandidateSet | Mapping[str, Any]],
    embed: Embedder | None = None,
    *,
    tokenize: Tokenizer | None = None,
    distinct_ns: Sequence[int] = DEFAULT_DISTINCT_NS,
    overlap_n: int = 2,
    edit_max_tokens: int | None = DEFAULT_EDIT_MAX_TOKENS,
) -> dict[str, Any]:
    """Diversity and quality of candidate sets, aggregated over prompts.

    Each ``CandidateSet`` is one unit (one prompt from one origin; merge sets first to measure
    a blend). Per set it computes ``distinct_<n>`` for each ``n`` in ``distinct_ns``,
    ``ngram_overlap`` / ``ngram_diversity`` (``overlap_n``-grams), ``edit_diversity`` and, when
    ``embed`` is given, ``embedding_dispersion``; each becomes ``{"mean", "ci95", "std", "n"}``
    over the sets with at least two candidates (the others are counted in ``skipped_single``).
    When sets carry scores: ``quality_mean`` and ``quality_max`` over scored sets,
    ``quality_std`` and ``quality_spread`` over scored sets with two or more candidates, and
    ``n_scored``.

    Also: ``n_sets``, ``n_prompts`` (distinct prompt ids), ``n_candidates``,
    ``mean_candidates`` (per set), ``mean_length`` (tokens per candidate), ``sources``
    (candidate count per source) and ``origins`` (set count per origin).
    """
    tok = _tok(tokenize)
    items = [_as_set(s) for s in sets]

    prompt_ids: set[str] = set()
    sources: Counter[str] = Counter()
    origins: Counter[str] = Counter()
    lengths: list[int] = []
    per: dict[str, list[float]] = {f"distinct_{n}": [] for n in distinct_ns}
    per.update(ngram_overlap=[], ngram_diversity=[], edit_diversity=[])
    if embed is not None:
        per["embedding_dispersion"] = []
    q: dict[str, list[float]] = {"mean": [], "max": [], "std": [], "spread": []}
    skipped_single = 0
    to_embed: list[list[str]] = []

    for cs in items:
        prompt_ids.add(cs.prompt_id)
        sources.update(cs.sources)
        origins[cs.origin] += 1
        toks = [tok(c) for c in cs.candidates]
        lengths.extend(len(t) for t in toks)
        multi = len(cs.candidates) >= 2
        if cs.scores is not None and len(cs.scores) > 0:
            qs = quality(cs.scores)
            q["mean"].append(qs["mean"])
            q["max"].append(qs["max"])
            if multi:
                q["std"].append(qs["std"])
                q["spread"].append(qs["spread"])
        if not multi:
            skipped_single += 1
            continue
        for n in distinct_ns:
            per[f"distinct_{n}"].append(_distinct_tokens(toks, n))
        ov = _overlap_tokens(toks, overlap_n)
        per["ngram_overlap"].append(ov)
        per["ngram_diversity"].append(1.0 - ov)
        per["edit_diversity"].append(_edit_tokens(toks, edit_max_tokens))
        if embed is not None:
            to_embed.append(list(cs.candidates))

    if embed is not None:
        per["embedding_dispersion"] = _batched_dispersion(to_embed, embed)

    out: dict[str, Any] = {
        "n_sets": len(items),
        "n_prompts": len(prompt_ids),
        "n_candidates": len(lengths),
        "mean_candidates": float(len(lengths) / len(items)) if items else 0.0,
        "mean_length": float(np.mean(lengths)) if lengths else 0.0,
        "skipped_single": skipped_single,
        "sources": {str(k): int(v) for k, v in sorted(sources.items())},
        "origins": {str(k): int(v) for k, v in sorted(origins.items())},
    }
    for key, values in per.items():
        out[key] = mean_ci(values)
    if q["mean"]:
        out["n_scored"] = len(q["mean"])
        for key, values in q.items():
            out[f"quality_{key}"] = mean_ci(values)
    return out


def _batched_dispersion(groups: list[list[str]], embed: Embedder) -> list[float]:
    """Embedding dispersion per group, calling ``embed`` on a few hundred texts at a time."""
    out: list[float] = []
    i = 0
    while i < len(groups):
        batch = [groups[i]]
        size = len(groups[i])
        i += 1
        while i < len(groups) and size + len(groups[i]) <= EMBED_BATCH_TEXTS:
            batch.append(groups[i])
            size += len(groups[i])
            i += 1
        flat = [t for g in batch for t in g]
        vectors = np.asarray(embed(flat))
        if vectors.ndim != 2 or vectors.shape[0] != len(flat):
            raise ValueError(
                f"embed returned shape {vectors.shape} for {len(flat)} texts; "
                "expected (n_texts, dim)"
            )
        start = 0
        for g in batch:
            out.append(_pairwise_cosine_distance(vectors[start : start + len(g)]))
            start += len(g)
    return out


# --------------------------------------------------------------------------- pairs


def _as_text(value: Any) -> str:
    """A pair field as text: strings as they are; TRL conversational lists (``[{"role",
    "content"}, ...]``) as the joined contents of their assistant turns (all turns if none)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        msgs = [m for m in value if isinstance(m, Mapping)]
        turns = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "\n".join(str(m.get("content", "")) for m in turns)
    return "" if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pair_fields(row: PreferencePair | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(row, PreferencePair):
        return {
            "chosen": row.chosen,
            "rejected": row.rejected,
            "score_chosen": float(row.score_chosen),
            "score_rejected": float(row.score_rejected),
            "margin": float(row.margin),
            "origin": row.origin,
            "chosen_source": row.chosen_source,
            "rejected_source": row.rejected_source,
        }
    if not isinstance(row, Mapping):
        raise TypeError(f"expected PreferencePair or dict, got {type(row).__name__}")
    sc, sr = _opt_float(row.get("score_chosen")), _opt_float(row.get("score_rejected"))
    margin = _opt_float(row.get("margin"))
    if margin is None and sc is not None and sr is not None:
        margin = sc - sr
    return {
        "chosen": _as_text(row.get("chosen")),
        "rejected": _as_text(row.get("rejected")),
        "score_chosen": sc,
        "score_rejected": sr,
        "margin": margin,
        "origin": row.get("origin"),
        "chosen_source": row.get("chosen_source") or "",
        "rejected_source": row.get("rejected_source") or "",
    }


def diagnose_pairs(
    rows: Iterable[PreferencePair | Mapping[str, Any]],
    *,
    tokenize: Tokenizer | None = None,
    edit_max_tokens: int | None = DEFAULT_EDIT_MAX_TOKENS,
) -> dict[str, Any]:
    """Summary of preference pairs (``PreferencePair`` objects or row dicts, e.g. plain TRL
    ``prompt/chosen/rejected`` rows; missing scores/provenance are simply not reported).

    Returns ``n_pairs``; ``edit_distance`` (normalised token Levenshtein chosen vs rejected),
    ``margin``, ``score_chosen``, ``score_rejected``, ``chosen_length``, ``rejected_length`` and
    ``length_diff`` (chosen - rejected, tokens), each as ``{"mean", "ci95", "std", "n"}``;
    ``chosen_longer_rate`` / ``rejected_longer_rate`` (shares of pairs where the chosen /
    rejected answer has strictly more tokens - a high first share is the length bias DPO
    amplifies); ``origin_share`` (fraction of pairs per origin, ``"unknown"`` for rows without
    one); ``chosen_sources`` / ``rejected_sources`` counts when provenance is present.
    """
    tok = _tok(tokenize)
    edit: list[float] = []
    margins: list[float] = []
    sc: list[float] = []
    sr: list[float] = []
    len_c: list[int] = []
    len_r: list[int] = []
    origins: Counter[str] = Counter()
    c_src: Counter[str] = Counter()
    r_src: Counter[str] = Counter()

    for row in rows:
        f = _pair_fields(row)
        tc, tr = tok(f["chosen"]), tok(f["rejected"])
        len_c.append(len(tc))
        len_r.append(len(tr))
        edit.append(_norm_edit(tc, tr, edit_max_tokens))
        if f["margin"] is not None:
            margins.append(f["margin"])
        if f["score_chosen"] is not None:
            sc.append(f["score_chosen"])
        if f["score_rejected"] is not None:
            sr.append(f["score_rejected"])
        origins[str(f["origin"]) if f["origin"] is not None else "unknown"] += 1
        if f["chosen_source"]:
            c_src[str(f["chosen_source"])] += 1
        if f["rejected_source"]:
            r_src[str(f["rejected_source"])] += 1

    n = len(edit)
    out: dict[str, Any] = {"n_pairs": n}
    if n == 0:
        return out
    lc, lr = np.asarray(len_c, dtype=np.float64), np.asarray(len_r, dtype=np.float64)
    out["edit_distance"] = mean_ci(edit)
    if margins:
        out["margin"] = mean_ci(margins)
    if sc:
        out["score_chosen"] = mean_ci(sc)
    if sr:
        out["score_rejected"] = mean_ci(sr)
    out["chosen_length"] = mean_ci(lc)
    out["rejected_length"] = mean_ci(lr)
    out["length_diff"] = mean_ci(lc - lr)
    out["chosen_longer_rate"] = float(np.mean(lc > lr))
    out["rejected_longer_rate"] = float(np.mean(lr > lc))
    share = {o: 0.0 for o in ORIGINS}
    share.update({k: v / n for k, v in origins.items()})
    out["origin_share"] = {str(k): float(v) for k, v in sorted(share.items())}
    if c_src:
        out["chosen_sources"] = {k: int(v) for k, v in sorted(c_src.items())}
    if r_src:
        out["rejected_sources"] = {k: int(v) for k, v in sorted(r_src.items())}
    return out

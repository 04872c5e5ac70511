"""From candidate sets to preference pairs: score every candidate, then pair by a rule.

Rules: `max-min` (best vs worst, the paper's and most iterative-DPO recipes' choice) and
`max-random` (best vs a random lower-scored one). Ties carry no preference and are dropped;
pairs whose margin is below `min_margin` are dropped too (label noise is worst there). Judges
that only compare pairs (PairRM-like) rank candidates by their mean win probability against
the others (a Borda/Copeland score), which is how multi-candidate sets are ranked with PairRM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

from stagealign.data.schema import CandidateSet, PreferencePair
from stagealign.judges.base import Judge


#: Candidates (scalar judges) or comparisons (pairwise judges) per judge call in `score_sets`.
SCORE_CHUNK = 4096


def _chunks(sets: list[CandidateSet], size, limit: int) -> Iterator[list[CandidateSet]]:
    """Consecutive runs of sets holding about `limit` units each (a set is never split)."""
    chunk, n = [], 0
    for s in sets:
        chunk.append(s)
        n += size(s)
        if n >= limit:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def score_sets(sets: list[CandidateSet], judge: Judge, *, chunk: int = SCORE_CHUNK) -> None:
    """Fill `scores` of every set in place, in judge calls of about `chunk` candidates.

    Chunking bounds the memory of one call (the flat lists here and whatever the judge builds
    from them) whatever the pool size; it does not change any score.
    """
    todo = [s for s in sets if s.scores is None]
    if not todo:
        return
    if not judge.pairwise_only:
        for part in _chunks(todo, lambda s: len(s.candidates), chunk):
            prompts = [s.prompt for s in part for _ in s.candidates]
            answers = [c for s in part for c in s.candidates]
            flat = judge.score(prompts, answers).tolist()
            i = 0
            for s in part:
                s.scores = flat[i:i + len(s.candidates)]
                i += len(s.candidates)
        return
    for part in _chunks(todo, lambda s: len(s.candidates) * (len(s.candidates) - 1) // 2, chunk):
        prompts, a, b, where = [], [], [], []
        for si, s in enumerate(part):
            n = len(s.candidates)
            for i in range(n):
                for j in range(i + 1, n):
                    prompts.append(s.prompt)
                    a.append(s.candidates[i])
                    b.append(s.candidates[j])
                    where.append((si, i, j))
        p = judge.prob(prompts, a, b) if a else np.zeros(0)
        wins = [np.zeros(len(s.candidates)) for s in part]
        for (si, i, j), pij in zip(where, p):
            wins[si][i] += pij
            wins[si][j] += 1.0 - pij
        for s, w in zip(part, wins):
            s.scores = (w / max(len(s.candidates) - 1, 1)).tolist()


def make_pairs(sets: Iterable[CandidateSet], *, rule: str = "max-min", min_margin: float = 0.0,
               iteration: int = 0, rng: np.random.Generator | None = None) -> tuple[list[PreferencePair], Counter]:
    """Pairs from scored sets, with a count of what was dropped and why."""
    rng = rng or np.random.default_rng(0)
    pairs: list[PreferencePair] = []
    dropped: Counter = Counter()
    for s in sets:
        if s.scores is None:
            raise ValueError(f"prompt {s.prompt_id!r}: candidates are not scored")
        if len(s.candidates) < 2:
            dropped["single_candidate"] += 1
            continue
        scores = np.asarray(s.scores)
        best = int(np.argmax(scores))
        if rule == "max-min":
            other = int(np.argmin(scores))
        elif rule == "max-random":
            lower = np.flatnonzero(scores < scores[best])
            if lower.size == 0:
                dropped["tie"] += 1
                continue
            other = int(rng.choice(lower))
        else:
            raise ValueError(f"unknown pairing rule {rule!r}; expected max-min or max-random")
        if scores[best] == scores[other] or s.candidates[best] == s.candidates[other]:
            dropped["tie"] += 1
            continue
        if scores[best] - scores[other] < min_margin:
            dropped["below_margin"] += 1
            continue
        pairs.append(PreferencePair(
            prompt=s.prompt, chosen=s.candidates[best], rejected=s.candidates[other], prompt_id=s.prompt_id,
            score_chosen=float(scores[best]), score_rejected=float(scores[other]), origin=s.origin,
            iteration=iteration, chosen_source=s.sources[best], rejected_source=s.sources[other],
        ))
    return pairs, dropped

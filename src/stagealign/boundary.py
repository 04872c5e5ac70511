"""The boundary score: do the policy's own answers beat the static pool's, as the judge sees it?

BS = share of (on-policy answer, static answer) comparisons won by the on-policy answer, ties
counting 1/2, over probe prompts; the interval is clustered by prompt because the M x K votes
of one prompt share that prompt's difficulty. BS < threshold means the policy is still in the
preference-injection stage (train on the diverse static pool next); BS >= threshold means the
fine-tuning stage (train on its own samples).

Sequential mode probes `batch_prompts` prompts at a time and stops as soon as the interval
(at a Bonferroni-corrected interim level, see `stats.SequentialProbe`) excludes the threshold,
so a policy far from the boundary costs a fraction of a fixed probe.

Probe prompts whose formatted tokens plus `max_new_tokens` exceed the policy's context are
skipped (`fit_context`) and counted in `BoundaryResult.skipped_too_long`: past its context a
model with learned positions fails deep inside torch, and a rotary one silently generates
from positions it never saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from stagealign.config import BoundaryConfig, GenerationConfig
from stagealign.data.schema import CandidateSet, Prompt
from stagealign.generation import sample
from stagealign.judges.base import Judge
from stagealign.policy import Policy
from stagealign.seeds import look_seed
from stagealign.stats import SequentialProbe, cluster_mean, decide


@dataclass
class BoundaryResult:
    bs: float
    lo: float
    hi: float
    level: float
    decision: str  # injection | fine-tuning | uncertain
    threshold: float
    prompts: int
    comparisons: int
    generations: int
    generated_tokens: int
    judge_calls: int
    seconds: float
    sequential: bool
    looks: int
    #: policy token passes of this probe over those of one training epoch on `train_prompts`
    #: prompts (2 sequences per pair, forward + backward ~ 3 passes, + 1 reference pass); None
    #: when the training set size is unknown. The time ratio is in the run summary.
    cost_vs_epoch: float | None = None
    per_prompt: list[float] = field(default_factory=list)  # mean vote per probe prompt (for re-analysis)
    skipped_too_long: int = 0  # probe prompts skipped because they do not fit the context (fit_context)

    def to_dict(self) -> dict:
        return asdict(self)


def context_length(policy: Policy) -> int | None:
    """Tokens the policy can attend to: the model config's position limit, capped by the tokenizer's
    `model_max_length` when that is set to a real value; None when neither says."""
    cfg = policy.model.config
    n = next((v for v in (getattr(cfg, a, None) for a in ("max_position_embeddings", "n_positions",
                                                            "max_sequence_length", "seq_length"))
              if isinstance(v, int) and v > 0), None)
    tok_max = getattr(policy.tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10_000_000:
        n = tok_max if n is None else min(n, tok_max)
    return n


def fit_context(policy: Policy, prompts: list[Prompt], max_new_tokens: int
                ) -> tuple[list[Prompt], list[tuple[str, int]], int | None]:
    """(prompts that fit, [(id, tokens) of those that do not], the prompt-token limit).

    A prompt fits when its formatted tokens (as `generate` sees them) plus `max_new_tokens` stay
    within `context_length`; without a known context every prompt fits.
    """
    n = context_length(policy)
    if n is None or not prompts:
        return list(prompts), [], None if n is None else n - max_new_tokens
    limit = n - max_new_tokens
    enc = policy.tokenizer([policy.format(p) for p in prompts],
                           add_special_tokens=not policy.uses_chat_template)["input_ids"]
    kept, long = [], []
    for p, ids in zip(prompts, enc):
        if len(ids) <= limit:
            kept.append(p)
        else:
            long.append((p.id, len(ids)))
    return kept, long, limit


def votes_for(judge: Judge, prompt: str, on: list[str], off: list[str], hard: bool) -> np.ndarray:
    """All M x K on-vs-static votes of one prompt (P(on beats static), or 0 / 1/2 / 1), judged on their own."""
    return votes_for_many(judge, [prompt], [on], [off], hard)[0]


def votes_for_many(judge: Judge, prompts: list[str], on: list[list[str]], off: list[list[str]], hard: bool,
                   chunk: int = 4096) -> list[np.ndarray]:
    """`votes_for` of several prompts, judged together in calls of at most `chunk` comparisons:
    the same votes, in fewer and fuller judge batches (a reward model scored 6 answers per call
    otherwise; bench/judging.py)."""
    texts, a, b, sizes = [], [], [], []
    for prompt, o, s in zip(prompts, on, off):
        texts += [prompt] * (len(o) * len(s))
        a += [x for x in o for _ in s]
        b += [y for _ in o for y in s]
        sizes.append(len(o) * len(s))
    p = np.concatenate([judge.prob(texts[i:i + chunk], a[i:i + chunk], b[i:i + chunk])
                        for i in range(0, len(a), chunk)]) if a else np.zeros(0)
    if hard:
        p = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
    return np.split(p, np.cumsum(sizes)[:-1])


def measure(policy: Policy, probe: list[Prompt], pool: dict[str, CandidateSet], judge: Judge,
            cfg: BoundaryConfig, gen: GenerationConfig, *, seed: int, train_prompts: int | None = None,
            progress: Callable[[int], None] | None = None) -> BoundaryResult:
    """Estimate BS for `policy` on probe prompts that have static candidates in `pool`."""
    t0 = time.perf_counter()
    probe, too_long, limit = fit_context(policy, [p for p in probe if p.id in pool], gen.max_new_tokens)
    probe = probe[: cfg.probe_prompts]
    if not probe:
        if too_long:
            raise ValueError(f"all {len(too_long)} probe prompts are longer than {limit} tokens (the policy's context "
                             f"minus generation.max_new_tokens); e.g. prompt id {too_long[0][0]!r} has "
                             f"{too_long[0][1]} tokens")
        raise ValueError("no probe prompt has static candidates in the pool")
    batch = cfg.batch_prompts if cfg.sequential else len(probe)
    seq = SequentialProbe(max_clusters=len(probe), batch_size=batch, threshold=cfg.threshold, level=cfg.level,
                          min_clusters=min(cfg.min_prompts, len(probe)))
    clusters: list[np.ndarray] = []
    generations = tokens = prompt_tokens = comparisons = 0
    calls_before = getattr(judge, "calls", 0)
    for look, start in enumerate(range(0, len(probe), batch)):
        chunk = probe[start:start + batch]
        answers = sample(policy, chunk, n=cfg.samples, temperature=gen.temperature,
                         top_p=gen.top_p, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                         seed=look_seed(seed, look), backend=gen.backend)
        generations += sum(len(a) for a in answers)
        prompt_tokens += sum(len(policy.tokenizer(policy.format(p))["input_ids"]) * len(a)
                             for p, a in zip(chunk, answers))
        tokens += sum(len(policy.tokenizer(x, add_special_tokens=False)["input_ids"]) + 1 for a in answers for x in a)
        votes = votes_for_many(judge, [p.text for p in chunk], answers, [pool[p.id].candidates for p in chunk],
                               cfg.votes == "hard")
        comparisons += sum(v.size for v in votes)
        clusters.extend(votes)
        if cfg.sequential:
            seq.add(votes)
        if progress:
            progress(len(chunk))
        if cfg.sequential and seq.done:
            break
    # Report the interval at the nominal level over everything seen; the decision uses the
    # corrected interim interval in sequential mode (the one that justified stopping).
    est = cluster_mean(clusters, level=cfg.level)
    cost_ratio = None
    if train_prompts:
        seq_len = (prompt_tokens + tokens) / max(generations, 1)
        cost_ratio = (prompt_tokens + tokens) / (train_prompts * 2 * seq_len * 4)
    decision = seq.decision() if cfg.sequential else decide(est, cfg.threshold)
    return BoundaryResult(
        bs=est.mean, lo=est.lo, hi=est.hi, level=cfg.level, decision=decision, threshold=cfg.threshold,
        prompts=len(clusters), comparisons=comparisons, generations=generations, generated_tokens=tokens,
        judge_calls=getattr(judge, "calls", 0) - calls_before or comparisons,
        seconds=time.perf_counter() - t0, sequential=cfg.sequential, looks=seq.looks if cfg.sequential else 1,
        cost_vs_epoch=cost_ratio,
        per_prompt=[float(v.mean()) for v in clusters],
        skipped_too_long=len(too_long),
    )

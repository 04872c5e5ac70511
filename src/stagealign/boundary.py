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

Besides BS (with the configured `boundary.votes`), the probe records what the other decision
rules of `schedule.rule_decision` read, so a run can be decided, or re-decided from disk, by any
of them without sampling again. All come from the same samples and judge probabilities:

* `bs_soft*` / `bs_hard*`: BS with soft votes (the judge's probability) and with hard votes
  (0 / 1/2 / 1), both at the nominal level over every prompt seen (rule ``bs-hard``; soft BS moves
  with the judge's temperature, hard BS does not).
* `pool_threshold`: what static pairs teach towards: the mean win rate of each probed prompt's
  best static answer against its other static answers (rule ``bs-pool``). Costs `pool_comparisons`
  extra judge comparisons: every ordered pair, since a pairwise judge need not be symmetric.
* `uncovered*`, `top_share`: whether the pool holds preferred answers the policy cannot sample
  (rule ``coverage``): one teacher-forced pass over the static answer that beats the policy's
  samples most, only on prompts where it does beat them (its time is in `seconds` with the rest;
  a stage's timings stay out of the numbers a resumed run must reproduce).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from stagealign.config import BoundaryConfig, GenerationConfig
from stagealign.data.schema import CandidateSet, Prompt
from stagealign.generation import sample, vllm
from stagealign.judges.base import Judge
from stagealign.logprobs import BATCH_SIZE, fused_head, prompt_ids
from stagealign.policy import Policy
from stagealign.seeds import look_seed
from stagealign.stats import Estimate, SequentialProbe, cluster_mean, decide


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
    # What the other rules of `schedule.rule_decision` read (module docstring). Defaults are for
    # results recorded before them: None is "not recorded", which the rules report as missing.
    #: BS with soft votes (the judge's probability) and its interval at `level`, over all prompts seen
    bs_soft: float | None = None
    bs_soft_lo: float | None = None
    bs_soft_hi: float | None = None
    #: BS with hard votes (0 / 1/2 / 1) and its interval at `level`, over all prompts seen
    bs_hard: float | None = None
    bs_hard_lo: float | None = None
    bs_hard_hi: float | None = None
    #: mean over probed prompts with >= 2 static answers of their best static answer's win rate
    #: against the others (`votes` as configured); None when no prompt has two
    pool_threshold: float | None = None
    pool_comparisons: int = 0  # judge comparisons pool_threshold took (every ordered pair)
    #: share of probed prompts whose samples lose to a static answer holding a token the policy
    #: gives probability < coverage_eps, with its interval at `level`
    uncovered: float | None = None
    uncovered_lo: float | None = None
    uncovered_hi: float | None = None
    coverage_share: float | None = None  # boundary.coverage_share, so the coverage rule re-applies from disk
    coverage_eps: float | None = None
    top_share: float | None = None  # share of samples that beat every static answer of their prompt

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
    p = judge_probs(judge, texts, a, b, chunk)
    return np.split(hard_votes(p) if hard else p, np.cumsum(sizes)[:-1])


def judge_probs(judge: Judge, prompts: list[str], a: list[str], b: list[str], chunk: int = 4096) -> np.ndarray:
    """P(a_i beats b_i) for every i, in judge calls of at most `chunk` comparisons."""
    if not a:
        return np.zeros(0)
    return np.concatenate([judge.prob(prompts[i:i + chunk], a[i:i + chunk], b[i:i + chunk])
                           for i in range(0, len(a), chunk)])


def hard_votes(p: np.ndarray) -> np.ndarray:
    """Judge probabilities as hard votes: 1 for a win, 0 for a loss, 1/2 for a tie (p == 1/2)."""
    return np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))


def pool_threshold(judge: Judge, prompts: list[str], statics: list[list[str]], hard: bool
                   ) -> tuple[float | None, int]:
    """(mean over prompts of the best static answer's win rate against the other static answers
    of its prompt, comparisons judged); prompts with fewer than 2 static answers are left out,
    None when none is left.

    Every ordered pair is judged and a pair's vote is the mean of both orders: the judge contract
    does not promise P(a > b) = 1 - P(b > a) (a pairwise judge may favour a position), and BS
    itself always puts the policy's answer first, so one order would tilt the threshold.
    """
    keep = [(q, c) for q, c in zip(prompts, statics) if len(c) >= 2]
    texts, a, b = [], [], []
    for q, c in keep:
        pairs = [(i, j) for i in range(len(c)) for j in range(len(c)) if i != j]
        texts += [q] * len(pairs)
        a += [c[i] for i, _ in pairs]
        b += [c[j] for _, j in pairs]
    p = judge_probs(judge, texts, a, b)
    v = hard_votes(p) if hard else p
    best, at = [], 0
    for _, c in keep:
        k = len(c)
        w = np.full((k, k), np.nan)
        w[~np.eye(k, dtype=bool)] = v[at:at + k * (k - 1)]  # row-major over i, then j != i: the order judged
        at += k * (k - 1)
        wins = (w + 1.0 - w.T) / 2  # i's vote against j, both orders
        best.append(float(np.nanmax(np.nanmean(wins, axis=1))))
    return (float(np.mean(best)) if best else None), len(a)


@torch.inference_mode()
def min_token_logprobs(policy: Policy, prompts: list[Prompt], answers: list[str],
                       batch_size: int = BATCH_SIZE) -> list[float]:
    """The lowest log-probability the policy gives any token of each answer, teacher-forced after
    the formatted prompt (`logprobs.prompt_ids`, the ids generation conditions on; the answer
    tokenised as `measure` counts sampled tokens), right-padded as `logprobs` scores answers."""
    tok = policy.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    model = policy.model
    model.eval()
    dev = next(model.parameters()).device
    out: list[float] = []
    with fused_head(model):
        for start in range(0, len(prompts), batch_size):
            ctx = [prompt_ids(policy, p) for p in prompts[start:start + batch_size]]
            ans = tok(answers[start:start + batch_size], add_special_tokens=False)["input_ids"]
            ids = torch.full((len(ctx), max(len(c) + len(a) for c, a in zip(ctx, ans))), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            for i, (c, a) in enumerate(zip(ctx, ans)):
                ids[i, :len(c) + len(a)] = torch.tensor(c + a, dtype=torch.long)
                labels[i, len(c):len(c) + len(a)] = torch.tensor(a, dtype=torch.long)
            lp = model(input_ids=ids.to(dev), labels=labels.to(dev), fused_lm_head=True).log_probs
            out += lp.double().min(-1).values.tolist()  # unlabelled positions are 0, above every log-prob
    return out


@dataclass
class Coverage:
    """What `coverage` found, for `BoundaryResult`'s coverage fields and the probe's cost."""

    share: Estimate  # of probed prompts that are uncovered (0/1 per prompt)
    top_share: float  # of samples that beat every static answer of their prompt
    tokens: int  # token positions of the teacher-forced pass


def coverage(policy: Policy, prompts: list[Prompt], statics: list[list[str]], probs: list[np.ndarray],
             cfg: BoundaryConfig) -> Coverage:
    """Which probed prompts prefer a static answer the policy cannot sample, from the probe's
    M x K judge probabilities per prompt.

    A prompt is uncovered when its static answer that beats the samples most (lowest mean vote,
    `cfg.votes` as configured) does beat them (mean vote < 1/2) and holds a token the policy gives
    probability < `cfg.coverage_eps` at its position: DPO on the policy's own samples can never
    reach that answer, static pairs can. Only those prompts need the policy's forward pass.
    """
    losing = []  # (prompt index, the static answer that beats the samples most)
    for i, (c, p) in enumerate(zip(statics, probs)):
        if not c:
            continue
        col = (hard_votes(p) if cfg.votes == "hard" else p).mean(axis=0)
        j = int(np.argmin(col))
        if col[j] < 0.5:
            losing.append((i, c[j]))
    uncovered = np.zeros(len(prompts))
    n_tokens = 0
    if losing:
        vllm.suspend()  # a vLLM engine holds most of the GPU; the forward pass needs it
        lows = min_token_logprobs(policy, [prompts[i] for i, _ in losing], [a for _, a in losing])
        uncovered[[i for i, _ in losing]] = np.array(lows) < np.log(cfg.coverage_eps)
        n_tokens = sum(len(prompt_ids(policy, prompts[i])) for i, _ in losing) + sum(
            len(policy.tokenizer(a, add_special_tokens=False)["input_ids"]) for _, a in losing)
    top = sum(int((p > 0.5).all(axis=1).sum()) for p in probs) / max(sum(p.shape[0] for p in probs), 1)
    return Coverage(cluster_mean(uncovered, level=cfg.level), top, n_tokens)


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
    probs: list[np.ndarray] = []  # the judge's P(on beats static), M x K per probed prompt
    probed: list[Prompt] = []
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
        soft = votes_for_many(judge, [p.text for p in chunk], answers, [pool[p.id].candidates for p in chunk],
                              hard=False)
        votes = [hard_votes(v) for v in soft] if cfg.votes == "hard" else soft
        comparisons += sum(v.size for v in votes)
        clusters.extend(votes)
        probs += [v.reshape(len(a), -1) for v, a in zip(soft, answers)]
        probed += chunk
        if cfg.sequential:
            seq.add(votes)
        if progress:
            progress(len(chunk))
        if cfg.sequential and seq.done:
            break
    # Report the interval at the nominal level over everything seen; the decision uses the
    # corrected interim interval in sequential mode (the one that justified stopping).
    est = cluster_mean(clusters, level=cfg.level)
    soft_est = cluster_mean([p.ravel() for p in probs], level=cfg.level)
    hard_est = cluster_mean([hard_votes(p).ravel() for p in probs], level=cfg.level)
    pool_t, pool_comparisons = pool_threshold(judge, [p.text for p in probed], [pool[p.id].candidates for p in probed],
                                              cfg.votes == "hard")
    cover = coverage(policy, probed, [pool[p.id].candidates for p in probed], probs, cfg)
    cost_ratio = None
    if train_prompts:
        seq_len = (prompt_tokens + tokens) / max(generations, 1)
        cost_ratio = (prompt_tokens + tokens + cover.tokens) / (train_prompts * 2 * seq_len * 4)
    decision = seq.decision() if cfg.sequential else decide(est, cfg.threshold)
    return BoundaryResult(
        bs=est.mean, lo=est.lo, hi=est.hi, level=cfg.level, decision=decision, threshold=cfg.threshold,
        prompts=len(clusters), comparisons=comparisons, generations=generations, generated_tokens=tokens,
        judge_calls=getattr(judge, "calls", 0) - calls_before or comparisons + pool_comparisons,
        seconds=time.perf_counter() - t0, sequential=cfg.sequential, looks=seq.looks if cfg.sequential else 1,
        cost_vs_epoch=cost_ratio,
        per_prompt=[float(v.mean()) for v in clusters],
        skipped_too_long=len(too_long),
        bs_soft=soft_est.mean, bs_soft_lo=soft_est.lo, bs_soft_hi=soft_est.hi,
        bs_hard=hard_est.mean, bs_hard_lo=hard_est.lo, bs_hard_hi=hard_est.hi,
        pool_threshold=pool_t, pool_comparisons=pool_comparisons,
        uncovered=cover.share.mean, uncovered_lo=cover.share.lo, uncovered_hi=cover.share.hi,
        coverage_share=cfg.coverage_share, coverage_eps=cfg.coverage_eps, top_share=cover.top_share,
    )

"""Evaluation of a checkpoint on held-out prompts.

Reports the judge's mean score, the ground truth's mean (when the world knows it), the win rate
against reference answers (the initial policy's, by default) under the judge and under the
truth, and KL(policy || initial) estimated on the policy's own samples. Intervals are clustered
by prompt.
"""

from __future__ import annotations

import numpy as np

from stagealign.config import EvalConfig, GenerationConfig
from stagealign.data.schema import Prompt
from stagealign.distributed import shard_map
from stagealign.generation import generate, vllm
from stagealign.headline import HEADLINE
from stagealign.judges.base import Judge
from stagealign.logprobs import BATCH_SIZE, answer_logprobs
from stagealign.policy import Policy
from stagealign.stats import cluster_mean


def _est(clusters: list[np.ndarray], bounded: bool) -> dict:
    e = cluster_mean(clusters, bounded=bounded)
    return {"mean": e.mean, "lo": e.lo, "hi": e.hi}


def _win_rate(judge: Judge, prompts: list[Prompt], answers: list[list[str]], refs: dict[str, str]) -> dict | None:
    """P(answer beats the prompt's reference), clustered by prompt; prompts without one are left out."""
    rows = [(p.text, a, refs[p.id]) for p, a in zip(prompts, answers) if p.id in refs and a]
    if not rows:
        return None
    flat = [(t, x, r) for t, a, r in rows for x in a]
    probs = np.asarray(judge.prob(*map(list, zip(*flat))), dtype=float)
    return _est(np.split(probs, np.cumsum([len(a) for _, a, _ in rows])[:-1]), bounded=True)


def evaluate(policy: Policy, prompts: list[Prompt], judge: Judge, cfg: EvalConfig, gen: GenerationConfig, *,
             seed: int, truth: Judge | None = None, reference: dict[str, list[str]] | None = None,
             initial: Policy | None = None) -> tuple[dict, dict[str, list[str]]]:
    """Metrics dict and the sampled answers (keyed by prompt id, reusable as a reference)."""
    answers, token_ids = _sample(policy, prompts, cfg, gen, seed)  # conversations stay conversations
    by_id = {p.id: a for p, a in zip(prompts, answers)}
    flat_p = [p.text for p, a in zip(prompts, answers) for _ in a]
    flat_a = [x for a in answers for x in a]
    sizes = [len(a) for a in answers]

    def per_prompt(values: np.ndarray) -> list[np.ndarray]:
        return np.split(np.asarray(values, dtype=float), np.cumsum(sizes)[:-1])

    metrics: dict = {"prompts": len(prompts), "answers": len(flat_a),
                     "mean_words": float(np.mean([len(x.split()) for x in flat_a]))}
    if not judge.pairwise_only:
        metrics["judge_score"] = _est(per_prompt(judge.score(flat_p, flat_a)), bounded=False)
    if truth is not None:
        metrics["reward"] = _est(per_prompt(truth.score(flat_p, flat_a)), bounded=False)
    against = {"": {p.id: r[0] for p in prompts if (r := (reference or {}).get(p.id))},
               "_given": {p.id: p.reference for p in prompts if p.reference}}
    for suffix, refs in against.items():  # vs the initial policy's answers; vs references given with prompts
        for name, j in (("judge", judge), ("truth", truth)):
            if j is not None and (w := _win_rate(j, prompts, answers, refs)) is not None:
                metrics[f"win_rate{suffix}_{name}"] = w
    if reference is None and not any(key in metrics for key in HEADLINE):
        # the initial policy against its own answers: 1/2 by definition, the start of a pairwise-only run
        metrics["win_rate_judge"] = {"mean": 0.5, "lo": 0.5, "hi": 0.5}
    if initial is not None and cfg.kl:
        flat_q = [p for p, a in zip(prompts, answers) for _ in a]  # the prompts as the policy formats them
        metrics["kl_to_initial"] = _est(per_prompt(_log_ratios(policy, initial, flat_q, token_ids)),
                                        bounded=False)
    return metrics, by_id


def _sample(policy: Policy, texts: list[Prompt], cfg: EvalConfig, gen: GenerationConfig,
            seed: int) -> tuple[list[list[str]], list[list[list[int]]]]:
    """The answers, and the token ids they were sampled as, which the KL scores."""
    drawn = generate(policy, texts, n=cfg.samples, temperature=cfg.temperature, top_p=gen.top_p,
                     max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, seed=seed, backend=gen.backend)
    return drawn.texts, drawn.token_ids


def _log_ratios(policy: Policy, initial: Policy, prompts: list[Prompt], token_ids: list[list[list[int]]]) -> np.ndarray:
    """log pi(y | x) - log pi_0(y | x) of every sampled answer y (flat, in prompt order): its mean
    estimates KL(policy || initial). Scores the sampled token ids themselves, not re-tokenised text."""
    ids = [t for drawn in token_ids for t in drawn]
    vllm.suspend()  # a vLLM engine holds most of the GPU; the log-prob passes need it
    rows = list(zip(prompts, ids))  # split across ranks in a multi-process launch

    def logprobs(model: Policy, part: list[tuple[Prompt, list[int]]]) -> list[float]:
        return answer_logprobs(model, [p for p, _ in part], [t for _, t in part], batch_size=BATCH_SIZE)

    lp = np.array(shard_map(lambda part: logprobs(policy, part), rows, align=BATCH_SIZE))
    lp0 = np.array(shard_map(lambda part: logprobs(initial, part), rows, align=BATCH_SIZE))
    return lp - lp0

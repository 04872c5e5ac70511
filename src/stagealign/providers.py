"""Where a run's ingredients come from: the synthetic world, or real models and data.

A provider hands the pipeline prompts (train / probe / eval, disjoint), the static pool, the
judge, the optional ground truth and the initial policy's directory. The pipeline never asks
which kind it got.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagealign import plugins
from stagealign.config import RunConfig
from stagealign.data.schema import CandidateSet, Prompt
from stagealign.seeds import split_seed
from stagealign.judges.base import CachedJudge, Judge


@dataclass
class Provider:
    train: list[Prompt]
    probe: list[Prompt]
    eval: list[Prompt]
    pool: dict[str, CandidateSet]
    judge: Judge
    truth: Judge | None
    initial_policy: str  # directory or hub name
    skipped: dict[str, int]

    def fit_context(self, policy, max_new_tokens: int) -> dict:
        """Drop prompts `policy` cannot read and still answer in `max_new_tokens`; returns the
        record of what is left and what was skipped (the run keeps it as data.json).

        A split left empty is an error naming one of its prompts: past its context a model with
        learned positions fails deep inside torch, and a rotary one generates from positions it
        never saw.
        """
        from stagealign.boundary import fit_context

        skipped, long_ids, limit = dict(self.skipped), [], None
        for split in ("train", "probe", "eval"):
            kept, too_long, limit = fit_context(policy, getattr(self, split), max_new_tokens)
            if too_long and not kept:
                pid, n = too_long[0]
                raise ValueError(f"all {len(too_long)} {split} prompts are too long for the policy's context of "
                                 f"{limit + max_new_tokens} tokens with generation.max_new_tokens={max_new_tokens} "
                                 f"(prompt id {pid!r} has {n} tokens)")
            setattr(self, split, kept)
            long_ids += [pid for pid, _ in too_long]
        if long_ids:
            skipped["prompt_too_long"] = len(long_ids)
        return {"prompts": {s: len(getattr(self, s)) for s in ("train", "probe", "eval")}, "skipped": skipped,
                "max_prompt_tokens": limit, "prompt_too_long_ids": long_ids[:20]}


def build_provider(cfg: RunConfig, log=print) -> Provider:
    """A run's ingredients: from the plugin that provides `policy.testbed` runs (the synthetic
    world), else from a Hugging Face model and pool."""
    if cfg.policy.testbed is not None:
        return plugins.provider("testbed").build(cfg, log)
    return _huggingface(cfg, log)


def _huggingface(cfg: RunConfig, log) -> Provider:
    from stagealign.data.pool import load_pool
    from stagealign.judges import registry

    pool = load_pool(cfg.data.pool, format=cfg.data.format, split=cfg.data.split)
    if pool.skipped:
        log(f"[data] skipped rows: {dict(pool.skipped)}")
    prompts = list(pool.prompts)
    rng = np.random.default_rng(split_seed(cfg.seed))
    order = rng.permutation(len(prompts))
    n_eval = min(cfg.data.eval_prompts, max(1, len(prompts) // 10))
    n_probe = min(cfg.boundary.probe_prompts, max(1, len(prompts) // 10))
    if len(prompts) < n_eval + n_probe + 1:
        raise ValueError(f"{cfg.data.pool}: {len(prompts)} usable prompts are too few to hold out probe and eval prompts")
    ev = [prompts[i] for i in order[:n_eval]]
    pr = [prompts[i] for i in order[n_eval:n_eval + n_probe]]
    tr = [prompts[i] for i in order[n_eval + n_probe:]]
    if cfg.data.train_prompts:
        tr = tr[: cfg.data.train_prompts]
    judge = registry.build_judge(registry.spec_from_config(cfg.judge))
    sets = pool.sets
    if not cfg.data.keep_labels:
        for s in sets.values():  # the dataset's own scores (UltraFeedback ratings) are not the judge's
            s.scores = None
    elif pool.labels:
        for pid, (c, r) in pool.labels.items():
            s = sets[pid]
            s.scores = [1.0 if i == c else (0.0 if i == r else 0.5) for i in range(len(s.candidates))]
    return Provider(train=tr, probe=pr, eval=ev, pool=sets, judge=CachedJudge(judge), truth=None,
                    initial_policy=cfg.policy.model or "", skipped=dict(pool.skipped))

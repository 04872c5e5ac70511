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
from stagealign.seeds import derive, split_seed
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
    #: the provider's default for `data.iteration_prompts` (a config value overrides it)
    iteration_prompts: str = "disjoint"

    def train_prompts(self, iteration: int, iterations: int, mode: str | None = None) -> list[Prompt]:
        """Iteration `iteration`'s training prompts (1-based): all of them (`same`), or its own
        contiguous chunk of the (already shuffled) training prompts (`disjoint`, the default for
        real pools: iterative DPO trains each round on new prompts; with `same`, static after static
        is a second epoch on identical pairs)."""
        mode = mode or self.iteration_prompts
        if mode == "same":
            return list(self.train)
        size = len(self.train) // iterations
        if size < 1:
            raise ValueError(f"data.iteration_prompts=disjoint: {len(self.train)} training prompts cannot give "
                             f"each of {iterations} iterations its own prompts; use more prompts or 'same'")
        return self.train[(iteration - 1) * size: iteration * size]

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
    from stagealign.judges import registry

    pool = _load_pool(cfg, log)
    evaluated, every = _eval_set(cfg, log) if cfg.data.eval_pool else (None, [])
    tr, pr, ev, skipped = _split(cfg, pool.prompts, evaluated, every)
    if skipped:
        log(f"[data] {skipped['in_eval_set']} pool prompts are in the evaluation set "
            f"{cfg.data.eval_pool}: never trained or probed on")
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
                    initial_policy=cfg.policy.model or "", skipped={**pool.skipped, **skipped})


def evaluation_prompts(cfg: RunConfig, log=print) -> list[Prompt]:
    """A Hugging Face run's evaluation prompts, drawn as its provider draws them, without building
    its judge (and without reading its pool when `data.eval_pool` names them): what the exports
    of a finished run need."""
    if cfg.policy.testbed is not None:
        raise ValueError("the synthetic world's evaluation prompts belong to no benchmark; exports are for "
                         "Hugging Face runs (policy.model)")
    if cfg.data.eval_pool:
        return _eval_set(cfg, log)[0]
    return _split(cfg, _load_pool(cfg, log).prompts, None, [])[2]


def _load_pool(cfg: RunConfig, log):
    from stagealign.data.pool import load_pool

    pool = load_pool(cfg.data.pool, format=cfg.data.format, split=cfg.data.split, fields=cfg.data.fields)
    if pool.skipped:
        log(f"[data] skipped rows: {dict(pool.skipped)}")
    return pool


def _eval_set(cfg: RunConfig, log) -> tuple[list[Prompt], list[Prompt]]:
    """(the prompts evaluated, every prompt) of `data.eval_pool`: all of them, or `data.eval_prompts`
    of them drawn from `data.seed` (in the set's own order, so exports follow the benchmark's)."""
    from stagealign.exports import load_eval_set

    d = cfg.data
    es = load_eval_set(d.eval_pool, d.eval_format, d.eval_split)
    if es.skipped:
        log(f"[data] {d.eval_pool}: {es.skipped} (repeated prompts are evaluated once)")
    if len(es.prompts) <= d.eval_prompts:
        return es.prompts, es.prompts
    keep = np.random.default_rng(derive(d.seed, "eval_pool")).choice(len(es.prompts), d.eval_prompts, replace=False)
    log(f"[data] evaluating on {d.eval_prompts} of the {len(es.prompts)} {es.format} prompts of {d.eval_pool}; "
        f"data.eval_prompts={len(es.prompts)} evaluates on all of them")
    return [es.prompts[i] for i in sorted(keep)], es.prompts


def _split(cfg: RunConfig, prompts: list[Prompt], evaluated: list[Prompt] | None,
           exclude: list[Prompt]) -> tuple[list[Prompt], list[Prompt], list[Prompt], dict[str, int]]:
    """(train, probe, eval, skipped) of the pool's prompts: eval held out of the pool, or
    `evaluated` (a separate evaluation set), whose prompts (all of `exclude`) are then kept out of
    train and probe, matched by id or text."""
    prompts = list(prompts)
    rng = np.random.default_rng(split_seed(cfg.data.seed))
    order = rng.permutation(len(prompts))
    n_eval = 0 if evaluated is not None else min(cfg.data.eval_prompts, max(1, len(prompts) // 10))
    n_probe = min(cfg.boundary.probe_prompts, max(1, len(prompts) // 10))
    if len(prompts) < n_eval + n_probe + 1:
        what = "probe prompts" if evaluated is not None else "probe and eval prompts"
        raise ValueError(f"{cfg.data.pool}: {len(prompts)} usable prompts are too few to hold out {what}")
    ev = evaluated if evaluated is not None else [prompts[i] for i in order[:n_eval]]
    pr = [prompts[i] for i in order[n_eval:n_eval + n_probe]]
    tr = [prompts[i] for i in order[n_eval + n_probe:]]
    ids, texts = {p.id for p in exclude}, {p.text.strip() for p in exclude}
    kept_pr = [p for p in pr if p.id not in ids and p.text.strip() not in texts]
    kept_tr = [p for p in tr if p.id not in ids and p.text.strip() not in texts]
    overlap = len(pr) + len(tr) - len(kept_pr) - len(kept_tr)
    if cfg.data.train_prompts:
        kept_tr = kept_tr[: cfg.data.train_prompts]
    return kept_tr, kept_pr, ev, {"in_eval_set": overlap} if overlap else {}

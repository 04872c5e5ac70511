"""Where a run's ingredients come from: the synthetic world, or real models and data.

A provider hands the pipeline prompts (train / probe / eval, disjoint), the static pool, the
judge, the optional ground truth and the initial policy's directory. The pipeline never asks
which kind it got.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from stagealign.config import RunConfig
from stagealign.data.schema import CandidateSet, Prompt
from stagealign.judges.base import CachedJudge, CallableJudge, Judge, load_callable


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


def prompt_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def build_provider(cfg: RunConfig, log=print) -> Provider:
    if cfg.policy.testbed is not None:
        return _testbed(cfg, log)
    return _huggingface(cfg, log)


def _testbed(cfg: RunConfig, log) -> Provider:
    from stagealign.testbed.judges import GroundTruthJudge, NoisyJudge
    from stagealign.testbed.policies import initial_policy_dir
    from stagealign.testbed.world import World

    world = World(cfg.world)
    split = {s: [Prompt(prompt_id(t), t) for t in world.prompts(s)] for s in ("train", "probe", "eval")}
    if cfg.data.train_prompts:
        split["train"] = split["train"][: cfg.data.train_prompts]
    split["eval"] = split["eval"][: cfg.data.eval_prompts]
    pool = static_pool(world, split["train"] + split["probe"])
    truth = GroundTruthJudge(world)
    if cfg.judge.kind == "ground_truth":
        judge: Judge = truth
    elif cfg.judge.kind == "noisy":
        judge = NoisyJudge(world, seed=int(cfg.judge.options.get("seed", 0)))
    else:
        judge = _callable(cfg)
    return Provider(train=split["train"], probe=split["probe"], eval=split["eval"], pool=pool,
                    judge=CachedJudge(judge), truth=truth,
                    initial_policy=str(initial_policy_dir(world, cfg.policy.testbed, log=log)), skipped={})


def static_pool(world, prompts: list[Prompt]) -> dict[str, CandidateSet]:
    """`pool_samples` answers per pool writer per prompt, fixed by the world's seed (a dataset, not
    a run). Duplicate answers of one prompt are kept once."""
    rng = np.random.default_rng(world.cfg.seed + 104729)
    texts = [p.text for p in prompts]
    k = world.cfg.pool_samples
    per_writer = [(w.name, world.write(w, texts, k, rng)) for w in world.cfg.pool]
    pool = {}
    for i, p in enumerate(prompts):
        answers = {}
        for name, written in per_writer:
            for a in written[i]:
                answers.setdefault(a, name)
        pool[p.id] = CandidateSet(prompt_id=p.id, prompt=p.text, candidates=list(answers),
                                  sources=list(answers.values()), origin="static")
    return pool


def _callable(cfg: RunConfig) -> Judge:
    if not cfg.judge.path:
        raise ValueError("judge.kind=callable needs judge.path='package.module:function'")
    return CallableJudge(load_callable(cfg.judge.path), temperature=cfg.judge.temperature)


def judge_spec(cfg: RunConfig) -> dict:
    """`build_judge` spec of a real-model judge: `judge.options` plus the config's own keys.

    `judge.path` is the model (reward_model / pairrm path, openai `model`, callable
    `module:function`); `judge.batch_size` goes to the local models, `judge.temperature` (the
    Bradley-Terry temperature) to the scalar ones.
    """
    j = cfg.judge
    spec: dict = {"kind": j.kind, **j.options}
    if j.path:
        spec["model" if j.kind == "openai" else "path"] = j.path
    if j.kind in ("reward_model", "pairrm"):
        spec.setdefault("batch_size", j.batch_size)
    if j.kind in ("reward_model", "callable"):
        spec.setdefault("temperature", j.temperature)
    return spec


def _huggingface(cfg: RunConfig, log) -> Provider:
    from stagealign.data.loaders import load_pool
    from stagealign.judges.registry import build_judge

    pool = load_pool(cfg.data.pool, format=cfg.data.format, split=cfg.data.split)
    if pool.skipped:
        log(f"[data] skipped rows: {dict(pool.skipped)}")
    prompts = list(pool.prompts)
    rng = np.random.default_rng(cfg.seed + 17)
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
    judge = build_judge(judge_spec(cfg)) if cfg.judge.kind != "callable" else _callable(cfg)
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

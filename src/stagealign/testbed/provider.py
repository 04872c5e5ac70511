"""The synthetic world as a run provider: its prompts, static pool, judges and initial policies.

The pipeline never asks which provider it got; this one draws everything from the `world`
config section, so a grid over run seeds sees one fixed world (a data set, not a run).
"""

from __future__ import annotations

import numpy as np

from stagealign.data.schema import CandidateSet, Prompt, prompt_id
from stagealign.judges import registry
from stagealign.judges.base import CachedJudge
from stagealign.providers import Provider
from stagealign.testbed.judges import GroundTruthJudge
from stagealign.testbed.policies import initial_policy_dir
from stagealign.testbed.world import World


#: Every iteration trains on all of the world's training prompts. The world draws prompts from a
#: small space (families x modifier pairs), so a chunk per iteration would only halve the data of
#: each iteration without showing the policy anything new in kind; and the recorded results
#: (README, bench/results) were made this way. `data.iteration_prompts=disjoint` gives chunks.
ITERATION_PROMPTS = "same"


def build(cfg, log) -> Provider:
    world = World(cfg.world)
    split = {s: [Prompt(prompt_id(t), t) for t in world.prompts(s)] for s in ("train", "probe", "eval")}
    if cfg.data.train_prompts:
        split["train"] = split["train"][: cfg.data.train_prompts]
    split["eval"] = split["eval"][: cfg.data.eval_prompts]
    pool = static_pool(world, split["train"] + split["probe"])
    truth = GroundTruthJudge(world)
    judge = registry.build_judge(registry.spec_from_config(cfg.judge), context={"world": world})
    return Provider(train=split["train"], probe=split["probe"], eval=split["eval"], pool=pool,
                    judge=CachedJudge(judge), truth=truth,
                    initial_policy=str(initial_policy_dir(world, cfg.policy.testbed, log=log)), skipped={},
                    iteration_prompts=ITERATION_PROMPTS)


def static_pool(world: World, prompts: list[Prompt]) -> dict[str, CandidateSet]:
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


def dry_run(cfg):
    """What `--dry-run` says about a synthetic-world config: the policy exists, split sizes."""
    from stagealign.plugins import DryRunPlan

    world_cfg = cfg.world
    lines, errors = [], []
    name = cfg.policy.testbed
    if name not in world_cfg.policies:
        errors.append(f"policy.testbed: {name!r} is not a policy of the synthetic world "
                      f"(known: {', '.join(sorted(world_cfg.policies))})")
    else:
        lines.append(f"policy: synthetic world policy {name!r} (trained and cached on first use)")
    lines.append(f"data: synthetic world prompts and its static pool ({len(world_cfg.pool)} writers per prompt)")
    world = World(world_cfg)
    n_train = len(world.prompts("train"))
    if cfg.data.train_prompts:
        n_train = min(n_train, cfg.data.train_prompts)
    return DryRunPlan(lines=lines, errors=errors, train_prompts=n_train,
                      probe_prompts=min(cfg.boundary.probe_prompts, len(world.prompts("probe"))),
                      eval_prompts=min(cfg.data.eval_prompts, len(world.prompts("eval"))),
                      answers_per_prompt=len(world_cfg.pool), iteration_prompts=ITERATION_PROMPTS)

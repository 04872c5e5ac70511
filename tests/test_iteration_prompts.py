"""Which prompts each iteration trains on, and which prompts a run evaluates on.

Iterative DPO trains each round on new prompts: with `same`, static after static is a second
epoch on identical pairs. And a grid over run seeds must evaluate every seed on the same prompts,
so the split comes from `data.seed`, not the run seed.
"""

from __future__ import annotations

import tiny_hf
from stagealign.config import load_config
from stagealign.pipeline import Run
from stagealign.providers import build_provider
from stagealign.rundir import RunDir


def _overrides(tmp_path, *extra: str) -> list[str]:
    return tiny_hf.quick_run(tmp_path, "data.eval_prompts=6", "training.batch_size=16", "iterations=2",
                             "schedule.kind=path", "schedule.path=off,off", *extra, prompts=60)


def _trained_prompts(run_dir, k: int) -> set[str]:
    return {r["prompt"] for r in RunDir(run_dir).read_rows(k, "pairs.jsonl")}


def test_real_pools_give_each_iteration_its_own_prompts(tmp_path):
    base = _overrides(tmp_path)
    Run(load_config(None, [f"run_dir={tmp_path / 'disjoint'}", *base])).execute()
    first, second = _trained_prompts(tmp_path / "disjoint", 1), _trained_prompts(tmp_path / "disjoint", 2)
    assert first and second and not first & second  # off -> off is no longer a second epoch

    Run(load_config(None, [f"run_dir={tmp_path / 'same'}", "data.iteration_prompts=same", *base])).execute()
    assert _trained_prompts(tmp_path / "same", 1) == _trained_prompts(tmp_path / "same", 2)
    assert _trained_prompts(tmp_path / "same", 1) >= first | second


def test_the_split_comes_from_the_data_seed_not_the_run_seed(tmp_path):
    base = _overrides(tmp_path)

    def split(*extra: str) -> dict[str, list[str]]:
        p = build_provider(load_config(None, [*base, *extra]), log=lambda m: None)
        return {s: [q.id for q in getattr(p, s)] for s in ("train", "probe", "eval")}

    assert split("seed=0") == split("seed=5")  # a grid over run seeds: same held-out prompts
    assert split("data.seed=0")["eval"] != split("data.seed=1")["eval"]


def test_the_world_says_it_trains_every_iteration_on_all_its_prompts(tmp_path):
    from conftest import tiny_config

    from stagealign.dryrun import validate

    cfg = tiny_config(tmp_path / "run")
    p = build_provider(cfg, log=lambda m: None)
    assert p.iteration_prompts == "same" and p.train_prompts(2, 2) == p.train
    lines = validate(load_config(None, [*_overrides(tmp_path)]), cuda=False)
    assert any("iteration_prompts=disjoint" in line for line in lines)

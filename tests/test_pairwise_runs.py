"""Runs judged by a pairwise-only judge (PairRM, an LLM endpoint, the world's noisy ranker).

Such a judge gives no scalar score, so the headline metric of the run is its win rate against
the initial policy (or against the references given with the prompts); the loop, the summary,
the grid metrics and the report must all work with it and say which metric they show.
"""

from __future__ import annotations

import gc

import numpy as np
from transformers import LlamaForCausalLM

import tiny_hf
from conftest import tiny_config
from stagealign.config import EvalConfig, GenerationConfig, load_config
from stagealign.data.schema import Prompt
from stagealign.evaluate import evaluate
from stagealign.headline import headline
from stagealign.grid import grid_metrics, load_grid_config, run_grid
from stagealign.judges.base import Judge
from stagealign.pipeline import Run
from stagealign.policy import load_policy
from stagealign.report import iteration_table, write_grid_report


def pairwise_longer(prompts, a, b):
    """P(a > b) of a pairwise-only judge that prefers the longer answer (ties 1/2)."""
    return [0.5 if len(x) == len(y) else float(len(x) > len(y)) for x, y in zip(a, b)]


def _hf(tmp_path, *extra: str):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=48)
    return [f"policy.model={model}", f"data.pool={pool}", "data.format=generic", "judge.kind=pairwise_callable",
            "judge.path=test_pairwise_runs:pairwise_longer", "data.eval_prompts=6", "generation.n=3",
            "generation.max_new_tokens=6", "boundary.probe_prompts=4", "boundary.min_prompts=2",
            "boundary.batch_prompts=4", "training.batch_size=8", "training.learning_rate=0.01", *extra]


def test_a_pairwise_judge_run_reports_its_win_rate_against_the_initial_policy(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "iterations=2", "schedule.kind=auto",
                             *_hf(tmp_path)])
    summary = Run(cfg).execute()  # crashed at iteration 0 when the loop assumed a judge score
    assert summary["metric"] == "win_rate_judge"
    assert summary["initial"]["win_rate_judge"]["mean"] == 0.5  # the initial policy against itself
    rows = summary["iterations"]
    assert [r["metric"] for r in rows] == ["win_rate_judge"] * 2
    for r in rows:
        assert 0.0 <= r["after_lo"] <= r["after"] <= r["after_hi"] <= 1.0
        assert r["after"] == r["win_rate_judge"] and r["bs"] is not None
    assert rows[0]["before"] == 0.5 and rows[1]["before"] == rows[0]["after"]
    table = iteration_table([summary])
    assert "win rate vs init before" in table.splitlines()[0]


def test_a_pairwise_grid_has_metrics_and_a_report(tmp_path):
    spec_file = tmp_path / "grid.yaml"
    spec_file.write_text("grid: {paths: ['off', 'on'], schedules: [auto]}\n")
    cfg, spec = load_grid_config(spec_file, [f"run_dir={tmp_path / 'g'}", "iterations=1", *_hf(tmp_path)])
    metrics = run_grid(cfg, spec, tmp_path / "g")
    assert metrics["metric"] == "win_rate_judge"
    eff = metrics["groups"][0]["effectiveness"]
    assert eff["static_gain"]["mean"] is not None and eff["onpolicy_gain"]["mean"] is not None
    text = write_grid_report(tmp_path / "g", grid_metrics(tmp_path / "g")).read_text()
    assert "judge win rate vs the initial policy" in text and "win rate vs init @1" in text


class _Longer(Judge):
    """A pairwise-only judge: prefers the longer answer (ties 1/2)."""

    pairwise_only = True
    name = "longer"

    def _prob(self, prompts, a, b):
        return np.array([0.5 if len(x) == len(y) else float(len(x) > len(y)) for x, y in zip(a, b)])


def test_given_references_are_the_headline_of_a_pairwise_evaluation(tmp_path):
    """With references given with the prompts, a pairwise judge's win rate against them is defined
    from iteration 0 on, so it is the metric; without them the initial policy is the yardstick."""
    policy = load_policy(tiny_hf.save_policy_dir(tmp_path / "sft"))
    gen = GenerationConfig(max_new_tokens=4)
    with_refs = [Prompt(f"p{i}", f"w{i} w{i + 1}", reference="x") for i in range(6)]
    metrics, _ = evaluate(policy, with_refs, _Longer(), EvalConfig(kl=False), gen, seed=0)
    key, est = headline(metrics)
    assert key == "win_rate_given_judge" and 0.0 <= est["lo"] <= est["mean"] <= est["hi"] <= 1.0
    plain = [Prompt(p.id, p.text) for p in with_refs]
    metrics, answers = evaluate(policy, plain, _Longer(), EvalConfig(kl=False), gen, seed=0)
    assert headline(metrics) == ("win_rate_judge", {"mean": 0.5, "lo": 0.5, "hi": 0.5})
    later, _ = evaluate(policy, plain, _Longer(), EvalConfig(kl=False), gen, seed=1, reference=answers)
    assert headline(later)[0] == "win_rate_judge" and "judge_score" not in later


def test_training_holds_at_most_two_copies_of_the_policy(tmp_path, monkeypatch):
    """Measure and build leave policy k-1 loaded, the KL needs the initial one: neither may stay
    resident while training (a 7-8B run has room for the trained copy and TRL's reference only)."""
    import stagealign.pipeline as pipeline

    seen = []
    real = pipeline.train_preference

    def counting(policy, *args, **kwargs):
        gc.collect()
        seen.append(sum(isinstance(o, LlamaForCausalLM) for o in gc.get_objects()))  # whole policies
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_preference", counting)
    cfg = tiny_config(tmp_path / "run", "policy.testbed=weak", "iterations=2", "eval.kl=true",
                      "schedule.kind=path", "schedule.path=on,on")
    Run(cfg).execute()
    assert len(seen) == 2 and max(seen) <= 1, seen  # TRL builds its reference inside, after this point

"""Nothing is judged twice: judgments survive iterations and kills (`judges.store`).

A PairRM or LLM-endpoint judgment costs GPU time or money; a resumed run must not pay again for
comparisons it already made, and an iteration must not re-judge static answers it judged before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import tiny_hf
from stagealign.config import dump_config, load_config
from stagealign.judges.base import PairwiseCallableJudge
from stagealign.judges.store import JudgmentStore, StoredJudge
from stagealign.pipeline import Run
from stagealign.rundir import RunDir, stage_key

CALLS: list[int] = []


def counted_longer(prompts, a, b):
    """A pairwise-only judge that prefers the longer answer and counts its comparisons."""
    CALLS.append(len(a))
    return [0.5 if len(x) == len(y) else float(len(x) > len(y)) for x, y in zip(a, b)]


def test_a_stored_judge_asks_only_for_what_it_has_not_seen(tmp_path):
    CALLS.clear()
    store = JudgmentStore(tmp_path / "j.sqlite")
    judge = StoredJudge(PairwiseCallableJudge(counted_longer), store)
    first = judge.prob(["p", "p", "p"], ["a", "bb", "a"], ["bb", "a", "bb"])
    assert first.tolist() == [0.0, 1.0, 0.0] and CALLS == [2]  # the repeated comparison is asked once
    again = StoredJudge(PairwiseCallableJudge(counted_longer), store)  # a new process: read from disk
    assert again.prob(["p", "p"], ["bb", "ccc"], ["a", "a"]).tolist() == [1.0, 1.0]
    assert CALLS == [2, 1] and again.calls == 1


def test_a_resumed_run_does_not_pay_again_for_its_judgments(tmp_path):
    """Killed after the build stage judged the static pool: the resumed run re-builds the stage
    but asks the judge for none of those comparisons again, and ends where an uninterrupted run ends."""
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    base = [f"policy.model={model}", f"data.pool={pool}", "data.format=generic", "judge.kind=pairwise_callable",
            "judge.path=test_judgment_store:counted_longer", "data.eval_prompts=4", "generation.n=2",
            "generation.max_new_tokens=4", "boundary.enabled=false", "eval.kl=false", "training.batch_size=16",
            "iterations=1", "schedule.kind=path", "schedule.path=off"]
    killed = load_config(None, [f"run_dir={tmp_path / 'killed'}", *base])
    config = tmp_path / "killed.yaml"
    config.write_text(dump_config(killed))
    env = {**os.environ, "STAGEALIGN_FAULT": f"{stage_key(1, 'build')}:after-artifact",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "stagealign.cli", "run", str(config)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    rd = RunDir(killed.run_dir)
    assert not rd.has(1, "build") and rd.judgments_path.is_file()

    CALLS.clear()
    resumed = Run(killed).execute()
    static_pairs = len(JudgmentStore(rd.judgments_path).load())
    assert static_pairs > 0 and sum(CALLS) < static_pairs  # the build's comparisons came from disk
    build_calls = sum(CALLS)

    CALLS.clear()
    fresh = Run(load_config(None, [f"run_dir={tmp_path / 'fresh'}", *base])).execute()
    assert sum(CALLS) > build_calls  # an uninterrupted run asks for all of them
    assert [r["after"] for r in resumed["iterations"]] == [r["after"] for r in fresh["iterations"]]
    assert list(rd.read_rows(1, "pairs.jsonl")) == list(RunDir(tmp_path / "fresh").read_rows(1, "pairs.jsonl"))
    assert np.isfinite(resumed["iterations"][0]["after"])

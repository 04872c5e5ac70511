"""`stagealign run` under `accelerate launch` with 2 CPU processes (gloo) on the tiny world.

The launch uses the shipped configs/accelerate/cpu-2proc.yaml. Sampling, the boundary score and
judging are split across the two processes; the main process alone writes the run directory.
Pairs are built before any training, so iteration 1's boundary score and pairs must be exactly
those of one process with the same config (HF sampling deals whole batches to the ranks under
the single-process seeds); training then runs TRL's DDP (2 ranks, per-device batch), so later
numbers are checked only for being complete and finite.
"""

import math
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from conftest import tiny_config
from stagealign import artifacts, distributed
from stagealign.config import dump_config
from stagealign.pipeline import Run
from stagealign.rundir import RunDir, stage_key

LAUNCH_CONFIG = files("stagealign") / "configs" / "accelerate" / "cpu-2proc.yaml"
EXTRA = ("policy.testbed=strong", "iterations=1", "schedule.kind=path", "schedule.path=on",
         "generation.batch_size=16")  # 16-prompt batches: several batches to deal to the two ranks


def _launch(config: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(accelerate), "launch", "--config_file", str(LAUNCH_CONFIG),
                           "-m", "stagealign.cli", "run", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("n,align", [(0, 1), (1, 1), (7, 1), (10, 1), (130, 64), (64, 64), (5, 64)])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_cover_every_item_once_in_order(monkeypatch, n, align, size):
    spans = []
    for r in range(size):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "size", lambda: size)
        spans.append(distributed.shard_bounds(n, align))
    assert [i for lo, hi in spans for i in range(lo, hi)] == list(range(n))
    assert all(lo % align == 0 for lo, hi in spans if hi > lo)  # whole batches of `align`


def test_one_process_helpers_are_the_identity():
    assert not distributed.launched() and distributed.size() == 1 and distributed.is_main()
    assert distributed.gather([1, 2]) == [1, 2] and distributed.from_main({"a": 1}) == {"a": 1}
    assert distributed.shard_map(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]
    judge = object()
    assert distributed.sharded_judge(judge) is judge


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_two_cpu_processes_write_the_run_of_one(tmp_path):
    one = Run(tiny_config(tmp_path / "one", *EXTRA)).execute()  # also fills the session's policy cache

    cfg = tiny_config(tmp_path / "two", *EXTRA)
    config = tmp_path / "two.yaml"
    config.write_text(dump_config(cfg))
    proc = _launch(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    d = Path(cfg.run_dir)
    rd, rd1 = RunDir(d), RunDir(tmp_path / "one")
    done = rd.done()
    assert done == [stage_key(0, "evaluate")] + [stage_key(1, s) for s in ("measure", "decide", "build", "train",
                                                                           "evaluate")]
    assert (rd.model(1) / "model.safetensors").is_file()
    assert not list(d.rglob("*.tmp"))
    two = artifacts.read_json(d / "summary.json")
    row, row1 = two["iterations"][0], one["iterations"][0]
    assert all(_finite(row[k]) for k in ("bs", "before", "after", "pairs"))

    # everything before training is the single process's, number for number
    pairs1 = artifacts.read_jsonl(rd1.file(1, "pairs.jsonl"))
    pairs2 = artifacts.read_jsonl(rd.file(1, "pairs.jsonl"))
    assert len(pairs2) == len(pairs1) == row["pairs"] == row1["pairs"] > 0
    assert pairs2 == pairs1
    assert (row["bs"], row["source"], row["before"]) == (row1["bs"], row1["source"], row1["before"])
    m1, m2 = (artifacts.read_json(r.stage_path(1, "measure")) for r in (rd1, rd))
    for key in ("bs", "lo", "hi", "prompts", "comparisons", "generations", "per_prompt"):
        assert m2[key] == m1[key], key
    # judge calls are summed over the ranks' shares; a prompt split between two shares has its
    # static answers scored on both, so the sum is at least one process's count
    assert m2["judge_calls"] >= m1["judge_calls"] > 0
    build1 = artifacts.read_json(rd1.stage_path(1, "build"))
    build2 = artifacts.read_json(rd.stage_path(1, "build"))
    assert build2["by_origin"] == build1["by_origin"] == {"onpolicy": row["pairs"]}
    # TRL trained with DDP over the 2 ranks: each rank took half the steps of one process
    steps1 = artifacts.read_json(rd1.stage_path(1, "train"))["steps"]
    steps2 = artifacts.read_json(rd.stage_path(1, "train"))["steps"]
    assert steps2 < steps1 or steps1 == 1

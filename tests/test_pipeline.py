"""End to end on the tiny world: artifacts, resume after SIGKILL, determinism."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_config, tiny_world_overrides
from stagealign import artifacts
from stagealign.config import ConfigError, dump_config
from stagealign.pipeline import Run
from stagealign.rundir import RunDir, stage_key


def _numbers(run_dir):
    s = RunDir(run_dir).read_summary()
    return [(r["source"], r["bs"], r["pairs"], r["after"], r["kl"]) for r in s["iterations"]]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "auto"
    cfg = tiny_config(d, "policy.testbed=weak", "iterations=2", "schedule.rule=bs")  # auto on the probe's decision
    summary = Run(cfg).execute()
    return d, cfg, summary


def test_run_writes_every_artifact(auto_run):
    d, cfg, summary = auto_run
    rd = RunDir(d)
    assert rd.config_path.read_text() == dump_config(cfg)
    done = rd.done()
    assert done[0] == stage_key(0, "evaluate") and len(done) == 1 + 5 * cfg.iterations
    for k in (1, 2):
        assert (rd.model(k) / "model.safetensors").is_file() and (rd.model(k) / "tokenizer.json").is_file()
        pairs = artifacts.read_jsonl(rd.file(k, "pairs.jsonl"))
        assert pairs and {"prompt", "chosen", "rejected", "origin", "iteration", "margin"} <= set(pairs[0])
        assert all(p["iteration"] == k and p["margin"] > 0 for p in pairs)
        bs = artifacts.read_json(rd.stage_path(k, "measure"))
        assert 0 <= bs["lo"] <= bs["bs"] <= bs["hi"] <= 1
        assert bs["decision"] in ("injection", "fine-tuning", "uncertain")
        assert bs["generations"] > 0 and bs["judge_calls"] > 0 and bs["seconds"] > 0
    rows = summary["iterations"]
    assert [r["iteration"] for r in rows] == [1, 2]
    # auto follows the measured decision (static below the threshold, on-policy above)
    for r in rows:
        if r["decision"] == "injection":
            assert r["source"] == "static"
        elif r["decision"] == "fine-tuning":
            assert r["source"] == "onpolicy"
    assert not list(d.rglob("*.tmp")), "no temporary files may remain"


def test_rerun_redoes_nothing(auto_run, monkeypatch):
    d, cfg, summary = auto_run
    import stagealign.pipeline as pl

    def boom(*a, **k):
        raise AssertionError("a finished stage was redone")

    monkeypatch.setattr(pl, "train_preference", boom)
    monkeypatch.setattr(pl, "measure", boom)
    monkeypatch.setattr(pl, "generate", boom)
    assert Run(cfg).execute()["iterations"] == summary["iterations"]


def test_different_config_in_same_dir_is_refused(auto_run):
    d, cfg, _ = auto_run
    other = cfg.model_copy(update={"seed": cfg.seed + 1})
    with pytest.raises(ConfigError, match="different config"):
        Run(other).execute()


def test_a_moved_run_resumes_and_only_settings_its_schedule_reads_count(auto_run, tmp_path, monkeypatch):
    import shutil

    import stagealign.pipeline as pl

    d, cfg, summary = auto_run
    moved = tmp_path / "moved"
    shutil.copytree(d, moved, ignore=shutil.ignore_patterns("*.lock", "lock"))

    def boom(*a, **k):
        raise AssertionError("a finished stage was redone")

    for name in ("train_preference", "measure", "generate"):
        monkeypatch.setattr(pl, name, boom)
    # moved, and a race setting changed that an auto-by-bs run never reads: still the same run
    same = cfg.model_copy(update={"run_dir": moved, "schedule": cfg.schedule.model_copy(update={"race_budget": 0.5})})
    assert Run(same).execute()["iterations"] == summary["iterations"]
    # the rule it decides by is read: changing it is refused
    other = cfg.model_copy(update={"run_dir": moved, "schedule": cfg.schedule.model_copy(update={"rule": "coverage"})})
    with pytest.raises(ConfigError, match="different config"):
        Run(other).execute()


def test_onpolicy_path_builds_onpolicy_pairs_and_slic_runs(tmp_path):
    d = tmp_path / "on"
    cfg = tiny_config(d, "policy.testbed=strong", "iterations=1", "schedule.kind=path", "schedule.path=on",
                      "training.method=slic-hf", "boundary.enabled=false")
    s = Run(cfg).execute()
    pairs = artifacts.read_jsonl(RunDir(d).file(1, "pairs.jsonl"))
    assert {p["origin"] for p in pairs} == {"onpolicy"}
    assert all(p["chosen_source"] == "policy@0" for p in pairs)
    assert s["iterations"][0]["bs"] is None and s["method"] == "slic-hf"


def _cli_run(run_dir, *extra):
    args = [f"run_dir={run_dir}", *tiny_world_overrides(), "data.eval_prompts=64", "boundary.probe_prompts=32",
            "boundary.min_prompts=16", "boundary.batch_prompts=16", "training.batch_size=16", "training.epochs=3",
            "policy.testbed=boundary", "iterations=1", *extra]
    return [sys.executable, "-m", "stagealign.cli", "run", os.devnull, *args]


def test_sigkill_during_training_then_resume_matches_uninterrupted(tmp_path):
    """Kill the CLI with SIGKILL while TRL trains, re-run the same command: same final numbers."""
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    ref = subprocess.run([*_cli_run(ref_dir)[:4], str(empty), *_cli_run(ref_dir)[5:]], capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    cmd = [*_cli_run(killed_dir)[:4], str(empty), *_cli_run(killed_dir)[5:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = RunDir(killed_dir)
    state = killed.state_path
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the build stage is recorded: training starts next
        if state.is_file() and stage_key(1, "build") in json.loads(state.read_text())["done"]:
            break
        time.sleep(0.05)
    time.sleep(0.8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["done"]
    assert stage_key(1, "build") in done and stage_key(1, "train") not in done, f"not killed during training: {done}"
    assert not killed.model(1).exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _numbers(killed_dir) == _numbers(ref_dir)
    assert artifacts.read_jsonl(killed.file(1, "pairs.jsonl")) == artifacts.read_jsonl(
        RunDir(ref_dir).file(1, "pairs.jsonl"))


def test_ipo_with_tensorboard_logging(tmp_path):
    d = tmp_path / "ipo"
    cfg = tiny_config(d, "policy.testbed=weak", "iterations=1", "schedule.kind=static", "training.method=ipo",
                      "report_to=tensorboard", "training.reference=initial")
    s = Run(cfg).execute()
    assert s["method"] == "ipo" and s["iterations"][0]["source"] == "static"
    rd = RunDir(d)
    train = artifacts.read_json(rd.stage_path(1, "train"))
    assert train["steps"] > 0 and all(math.isfinite(h["loss"]) for h in train["log_history"] if "loss" in h)
    assert list(rd.tensorboard_dir.glob("events.out.tfevents.*")), "pipeline scalars not logged"
    assert list(rd.work(1).rglob("events.out.tfevents.*")), "TRL training not logged"

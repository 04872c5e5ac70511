"""A run killed inside a long stage resumes inside it: finished sampling batches and training
checkpoints are not redone, and the run ends where an uninterrupted one ends.

(Judging resumes the same way through the judgment store: tests/test_judgment_store.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.generation.utils import GenerationMixin

import tiny_hf
from stagealign.config import dump_config, load_config
from stagealign.pipeline import Run
from stagealign.rundir import RunDir, stage_key


def _base(tmp_path, *extra: str) -> list[str]:
    return tiny_hf.quick_run(tmp_path, "generation.batch_size=8", "iterations=1", "schedule.kind=path",
                             "schedule.path=on", *extra)


def _killed(tmp_path, name: str, fault: str, base: list[str]):
    cfg = load_config(None, [f"run_dir={tmp_path / name}", *base])
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    env = {**os.environ, "STAGEALIGN_FAULT": fault,  # the child imports the judge from tests/
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "stagealign.cli", "run", str(path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return cfg


@pytest.fixture()
def generate_calls(monkeypatch):
    calls = []
    real = GenerationMixin.generate

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counting)
    return calls


def test_a_run_killed_while_sampling_keeps_its_finished_batches(tmp_path, generate_calls):
    base = _base(tmp_path)
    cfg = _killed(tmp_path, "killed", "sample-batch:1", base)  # after the build's second batch
    rd = RunDir(cfg.run_dir)
    logged = rd.read_partial(1, "samples")
    assert len(logged) == 16 and not rd.has(1, "build")  # two batches of 8 prompts were kept

    resumed = Run(cfg).execute()
    resumed_calls = len(generate_calls)
    assert not rd.partial_path(1, "samples").exists()  # the candidates file holds them now
    generate_calls.clear()
    fresh = Run(load_config(None, [f"run_dir={tmp_path / 'fresh'}", *base])).execute()
    assert resumed_calls == len(generate_calls) - 2 - 1  # two build batches kept; iteration 0's eval done
    assert list(rd.read_rows(1, "candidates.jsonl")) == list(RunDir(tmp_path / "fresh").read_rows(1, "candidates.jsonl"))
    assert resumed["iterations"][0]["after"] == fresh["iterations"][0]["after"]


def test_a_run_killed_while_training_resumes_from_its_last_checkpoint(tmp_path):
    base = _base(tmp_path, "training.save_steps=2", "schedule.path=off")
    cfg = _killed(tmp_path, "killed", "train-step:3", base)  # checkpoint at step 2 written, step 3 lost
    rd = RunDir(cfg.run_dir)
    assert rd.has(1, "build") and not rd.has(1, "train")

    resumed = Run(cfg).execute()
    train = rd.read_stage(1, "train")
    fresh = Run(load_config(None, [f"run_dir={tmp_path / 'fresh'}", *base])).execute()
    fresh_train = RunDir(tmp_path / "fresh").read_stage(1, "train")
    assert train["resumed_from_step"] == 2 and fresh_train["resumed_from_step"] is None
    assert train["steps"] == fresh_train["steps"] > 2  # steps 1-2 were not trained again
    assert resumed["iterations"][0]["after"] == pytest.approx(fresh["iterations"][0]["after"], abs=1e-6)
    mine, theirs = (load_file(RunDir(d).model(1) / "model.safetensors") for d in (cfg.run_dir, tmp_path / "fresh"))
    assert all(torch.allclose(mine[n], theirs[n], atol=1e-6) for n in theirs)  # the same trained weights
    assert stage_key(1, "train") in rd.done()

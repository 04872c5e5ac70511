"""Shared fixtures: a tiny world whose initial policies SFT in seconds, cached per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY_WORLD = {
    "scale": "small",
    "model": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64},
}
TINY_POLICY = {"examples": 512, "epochs": 2, "learning_rate": 0.005}


def tiny_world_overrides() -> list[str]:
    out = [f"world.scale={TINY_WORLD['scale']}"]
    out += [f"world.model.{k}={v}" for k, v in TINY_WORLD["model"].items()]
    for name in ("weak", "boundary", "strong"):
        out += [f"world.policies.{name}.{k}={v}" for k, v in TINY_POLICY.items()]
    return out


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test session SFTs its own tiny policies; nothing from the user's cache leaks in."""
    root = tmp_path_factory.mktemp("stagealign-cache")
    os.environ["STAGEALIGN_CACHE"] = str(root)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield root


def tiny_config(run_dir: Path, *extra: str):
    from stagealign.config import load_config

    return load_config(None, [f"run_dir={run_dir}", *tiny_world_overrides(), "data.eval_prompts=64",
                              "boundary.probe_prompts=32", "boundary.min_prompts=16", "boundary.batch_prompts=16",
                              "training.batch_size=32", *extra])


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stagealign.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ})

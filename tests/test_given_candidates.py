"""Bring your own on-policy candidates: an iteration trains on answers generated elsewhere (e.g.
on one's own vLLM cluster) for the prompts the file covers, with the file's scores or judged."""

from __future__ import annotations

import json

from transformers.generation.utils import GenerationMixin

import tiny_hf
from stagealign.config import load_config
from stagealign.pipeline import Run
from stagealign.rundir import RunDir


def test_an_iteration_trains_on_candidates_from_a_file(tmp_path, monkeypatch):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    given = tmp_path / "iter1.json"  # RLHFlow's reward-file layout, prompts as plain text
    rows = [{"prompt": tiny_hf.prompt_text(i), "responses": ["w1 w2", "w3 w4 w5", "w6"], "rewards": [0.1, 0.9, 0.5]}
            for i in range(40)]
    given.write_text(json.dumps({"type": "text_only", "instances": rows}))
    calls = []
    real = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"policy.model={model}", f"data.pool={pool}", "data.format=generic",
        "judge.kind=callable", "judge.path=tiny_hf:score", "data.eval_prompts=4", "generation.n=2",
        "generation.max_new_tokens=4", "generation.batch_size=64", "boundary.enabled=false", "eval.kl=false",
        "training.batch_size=8", "iterations=1", "schedule.kind=path", "schedule.path=on",
        f"data.onpolicy_candidates.1={given}"])
    Run(cfg).execute()
    pairs = list(RunDir(cfg.run_dir).read_rows(1, "pairs.jsonl"))
    assert pairs and all((p["chosen"], p["rejected"]) == ("w3 w4 w5", "w1 w2") for p in pairs)  # the file's scores
    assert all(p["origin"] == "onpolicy" and p["chosen_source"] == "policy@0" for p in pairs)
    assert len(calls) == 2  # only the two evaluations sampled: no on-policy sampling was needed

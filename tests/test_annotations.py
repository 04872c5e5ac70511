"""AlpacaEval-format annotations of a finished run: the same judgements as its evaluation."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import tiny_hf
from conftest import cli
from stagealign import artifacts
from stagealign.annotations import (AnnotationError, alpaca_eval_instructions, alpaca_eval_positions, annotations,
                                    length_controlled, raw_win_rate)
from stagealign.config import load_config
from stagealign.pipeline import Run
from stagealign.rundir import RunDir

HERE = Path(__file__).parent  # the CLI imports the test judge `tiny_hf:score` from here
WORST = "w20 w21 w22"  # the judge's lowest-scoring answer: a reference every answer can beat


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("annotate")
    model = tiny_hf.save_policy_dir(tmp / "sft")
    pool = tiny_hf.write_generic_pool(tmp / "pool.jsonl", prompts=40, reference=WORST)
    cfg = load_config(None, [
        f"run_dir={tmp / 'run'}", "iterations=1", f"policy.model={model}", f"data.pool={pool}",
        "data.format=generic", "judge.kind=callable", "judge.path=tiny_hf:score", "data.eval_prompts=4",
        "eval.samples=2", "generation.n=3", "generation.max_new_tokens=6", "boundary.probe_prompts=4",
        "boundary.min_prompts=2", "boundary.batch_prompts=4", "training.batch_size=8", "schedule.kind=path",
        "schedule.path=off"])
    Run(cfg).execute()
    return tmp / "run"


def test_annotations_reproduce_the_evaluation_win_rates(run_dir):
    evaluation = artifacts.read_json(RunDir(run_dir).stage_path(1, "evaluate"))
    given = annotations(run_dir, 1)  # the pool carries references: they are the default
    assert {r["output_1"] for r in given} == {WORST} and {r["generator_1"] for r in given} == {"reference"}
    assert len(given) == evaluation["answers"]
    assert all(1.0 <= r["preference"] <= 2.0 for r in given)
    assert raw_win_rate(given) == pytest.approx(100 * evaluation["win_rate_given_judge"]["mean"])
    initial = annotations(run_dir, 1, against="initial")
    answers0 = RunDir(run_dir).file(0, "eval_answers.jsonl")
    first = {r["prompt_id"]: r["answers"][0] for r in artifacts.iter_jsonl(answers0)}
    assert all(r["output_1"] == first[r["prompt_id"]] and r["generator_1"] == "policy@0" for r in initial)
    assert raw_win_rate(initial) == pytest.approx(100 * evaluation["win_rate_judge"]["mean"])
    assert not np.isclose(raw_win_rate(given), raw_win_rate(initial))


def test_annotate_cli_writes_the_file_and_explains_what_is_missing(run_dir):
    res = cli("annotate", str(run_dir), "--iteration", "1", cwd=HERE)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rows = json.loads(RunDir(run_dir).file(1, "annotations.json").read_text())
    assert out["comparisons"] == len(rows) and out["against"] == "reference"
    assert {"instruction", "output_1", "output_2", "generator_1", "generator_2", "annotator", "preference"} <= set(rows[0])
    res = cli("annotate", str(run_dir), "--iteration", "2", cwd=HERE)
    assert res.returncode == 2 and "iteration 2 has no evaluation answers" in res.stderr
    try:
        import alpaca_eval  # noqa: F401
    except ImportError:
        res = cli("annotate", str(run_dir), "--lc", cwd=HERE)
        assert res.returncode == 2 and "pip install 'stagealign[alpaca-eval]'" in res.stderr
        assert "Traceback" not in res.stderr


# ---- the length-controlled win rate: AlpacaEval's instructions, matched by text ----------------

ALPACA_SET = ["How do I bake bread?", "Name three primes.", "Write a haiku about rain."]  # AlpacaEval's order


def test_lc_positions_match_alpaca_eval_instructions_by_text_not_by_row():
    rows = ["Write a haiku about rain.", "Name three primes.", "Write a haiku about rain.", " How do I bake bread?"]
    assert alpaca_eval_positions(rows, ALPACA_SET) == [2, 1, 2, 0]  # two samples of one instruction share it


def test_lc_refuses_instructions_that_are_not_alpaca_eval_s():
    with pytest.raises(AnnotationError) as err:
        alpaca_eval_positions(["Name three primes.", "w1 w2 w3", "w4 w5", "w4 w5"], ALPACA_SET)
    msg = str(err.value)
    assert msg.startswith("2 of 3 instructions are not AlpacaEval's") and "\n" not in msg
    assert "needs AlpacaEval's instructions" in msg


def test_length_controlled_gives_alpaca_eval_the_instruction_positions(monkeypatch):
    """alpaca_eval is not installed here: a stand-in records what its GLM would be given."""
    seen = {}

    def get_length_controlled_winrate(df, save_weights_dir=None):
        seen["index"] = list(df.index)
        return {"win_rate": 50.0, "length_controlled_winrate": 42.0}

    metrics = types.SimpleNamespace(get_length_controlled_winrate=get_length_controlled_winrate)
    monkeypatch.setitem(sys.modules, "alpaca_eval", types.SimpleNamespace(metrics=metrics))
    monkeypatch.setitem(sys.modules, "alpaca_eval.metrics", metrics)
    monkeypatch.setattr("stagealign.annotations.alpaca_eval_instructions", lambda: ALPACA_SET)
    rows = [{"instruction": t, "output_1": "ref", "output_2": "mine", "preference": 1.5}
            for t in ("Write a haiku about rain.", "How do I bake bread?")]
    assert length_controlled(rows)["length_controlled_winrate"] == 42.0
    assert seen["index"] == [2, 0]
    with pytest.raises(AnnotationError, match="1 of 1 instructions are not AlpacaEval's"):
        length_controlled([{**rows[0], "instruction": "w1 w2 w3"}])


def test_alpaca_eval_instructions_come_from_its_hub_file_in_its_order(monkeypatch, tmp_path):
    baseline = tmp_path / "alpaca_eval_gpt4_baseline.json"
    baseline.write_text(json.dumps([{"dataset": "helpful_base", "instruction": t, "output": "o",
                                     "generator": "gpt4_1106_preview"} for t in ALPACA_SET]))
    asked = []

    def download(repo_id, filename, repo_type=None):
        asked.append((repo_id, filename, repo_type))
        return str(baseline)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    assert alpaca_eval_instructions() == ALPACA_SET
    assert asked == [("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json", "dataset")]

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(AnnotationError, match="cannot read AlpacaEval's instructions .*offline"):
        alpaca_eval_instructions()

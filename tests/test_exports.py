"""A separate evaluation set (AlpacaEval's or Arena-Hard's prompts) and the exports of each
iteration's evaluation answers in the files those benchmarks' own evaluators read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tiny_hf
from conftest import cli
from stagealign import artifacts
from stagealign.config import ConfigError, load_config
from stagealign.data.schema import prompt_id
from stagealign.data.sources import LoaderError
from stagealign.dryrun import validate
from stagealign.exports import export_iteration, export_run, load_eval_set
from stagealign.pipeline import Run
from stagealign.providers import evaluation_prompts
from stagealign.rundir import RunDir

HERE = Path(__file__).parent  # the CLI imports the test judge `tiny_hf:score` from here

# Rows field for field as the benchmarks publish them: tatsu-lab/alpaca_eval
# (alpaca_eval_gpt4_baseline.json) and arena-hard-auto v0.1's question.jsonl.
ALPACA_EVAL_ROW = {"dataset": "helpful_base",
                   "instruction": "What are the names of some famous actors that started their careers on Broadway?",
                   "output": "Several famous actors started their careers on Broadway before making it big in film.",
                   "generator": "gpt4_1106_preview"}
ARENA_HARD_ROW = {"question_id": "328c149ed45a41c0b9d6f14659e63599", "category": "arena-hard-v0.1",
                  "cluster": "ABC Sequence Puzzles & Groups",
                  "turns": [{"content": "Use ABC notation to write a melody in the style of a folk tune."}]}
#: AlpacaEval's model outputs and Arena-Hard-Auto's answer rows, as their tools read and write them
ALPACA_EVAL_OUTPUT_KEYS = {"instruction", "output", "generator"}
ARENA_HARD_ANSWER_KEYS = {"question_id", "answer_id", "model_id", "choices", "tstamp"}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def alpaca_rows(n: int, with_pool_prompt: bool = True) -> list[dict]:
    """AlpacaEval-shaped rows whose instructions the tiny policy reads (4 words: no pool prompt has
    4), the last one a pool prompt (its text appears in the static pool too)."""
    rows = [{**ALPACA_EVAL_ROW, "instruction": f"{tiny_hf.prompt_text(i)} w{i % 24}", "output": "w20 w21 w22"}
            for i in range(n)]
    if with_pool_prompt:
        rows[-1]["instruction"] = tiny_hf.prompt_text(0)
    return rows


def test_alpaca_eval_rows_are_prompts_keyed_by_instruction_with_their_reference(tmp_path):
    no_output = {**ALPACA_EVAL_ROW, "instruction": "Write a haiku about autumn.", "output": None}
    es = load_eval_set(write_rows(tmp_path / "alpaca_eval.jsonl", [ALPACA_EVAL_ROW, no_output, ALPACA_EVAL_ROW]))
    assert es.format == "alpaca_eval"
    assert [p.text for p in es.prompts] == [ALPACA_EVAL_ROW["instruction"], "Write a haiku about autumn."]
    assert es.prompts[0].id == prompt_id(ALPACA_EVAL_ROW["instruction"])  # AlpacaEval has no ids: the text is the key
    assert [p.reference for p in es.prompts] == [ALPACA_EVAL_ROW["output"], None]
    assert es.skipped == {"duplicate_prompt": 1}  # evaluated once


def test_arena_hard_questions_keep_their_question_ids(tmp_path):
    second = {**ARENA_HARD_ROW, "question_id": "b43c07656ead4150b360294ee932b410",
              "turns": [{"content": "SOLVE THIS IN C++ : There are three cards with letters a, b, c."}]}
    es = load_eval_set(write_rows(tmp_path / "question.jsonl", [ARENA_HARD_ROW, second]))
    assert es.format == "arena_hard"
    assert [p.id for p in es.prompts] == [ARENA_HARD_ROW["question_id"], second["question_id"]]
    assert es.prompts[0].text == ARENA_HARD_ROW["turns"][0]["content"] and es.prompts[0].reference is None


@pytest.mark.parametrize("rows, where, field", [
    ([ALPACA_EVAL_ROW, ALPACA_EVAL_ROW, {**ALPACA_EVAL_ROW, "instruction": "  "}], ":3", "'instruction'"),
    ([ALPACA_EVAL_ROW, {**ALPACA_EVAL_ROW, "instruction": "x", "output": ["a"]}], ":2", "'output'"),
    ([ARENA_HARD_ROW, {**ARENA_HARD_ROW, "question_id": "q2", "turns": [{"content": "a"}, {"content": "b"}]}],
     ":2", "'turns'"),
    ([ARENA_HARD_ROW, {**ARENA_HARD_ROW, "question_id": None}], ":2", "'question_id'"),
    ([ARENA_HARD_ROW, {**ARENA_HARD_ROW, "turns": [{"content": "another question"}]}], ":2", "already names"),
    ([{"question": "no known field"}], ":1", "cannot detect"),
])
def test_a_bad_evaluation_row_stops_the_load_in_one_line_naming_file_and_row(tmp_path, rows, where, field):
    path = write_rows(tmp_path / "eval.jsonl", rows)
    with pytest.raises(LoaderError) as err:
        load_eval_set(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}{where}: ") and field in msg and "\n" not in msg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One iteration of a tiny HF policy on a generic pool, evaluated on a separate AlpacaEval set
    of 7 instructions, of which data.eval_prompts=5 are drawn; one of them is also a pool prompt."""
    tmp = tmp_path_factory.mktemp("eval_pool")
    model = tiny_hf.save_policy_dir(tmp / "sft")
    pool = tiny_hf.write_generic_pool(tmp / "pool.jsonl", prompts=40)
    eval_pool = write_rows(tmp / "alpaca_eval.jsonl", alpaca_rows(7))
    cfg = load_config(None, [
        f"run_dir={tmp / 'run'}", "iterations=1", f"policy.model={model}", f"data.pool={pool}",
        f"data.eval_pool={eval_pool}", "data.eval_prompts=5", "data.format=generic", "judge.kind=callable",
        "judge.path=tiny_hf:score", "eval.samples=2", "generation.n=3", "generation.max_new_tokens=6",
        "boundary.probe_prompts=4", "boundary.min_prompts=2", "boundary.batch_prompts=4", "training.batch_size=8",
        "schedule.kind=path", "schedule.path=off", "data.iteration_prompts=same"])
    Run(cfg).execute()
    return cfg, RunDir(tmp / "run"), alpaca_rows(7)


def test_a_run_evaluates_on_the_eval_pool_and_never_trains_on_it(run):
    cfg, d, rows = run
    ids = {prompt_id(r["instruction"]) for r in rows}
    evaluated = [{r["prompt_id"] for r in d.read_rows(k, "eval_answers.jsonl")} for k in (0, 1)]
    assert evaluated[0] == evaluated[1] and len(evaluated[0]) == 5 and evaluated[0] <= ids
    assert evaluated[0] == {p.id for p in evaluation_prompts(cfg)}  # the same draw, read again without the run
    trained = {r["prompt_id"] for r in d.read_rows(1, "candidates.jsonl")}
    assert trained and not trained & ids  # the pool prompt that is also an eval instruction is held out
    assert artifacts.read_json(d.data_path)["skipped"]["in_eval_set"] == 1
    after = d.read_stage(1, "evaluate")
    assert after["prompts"] == 5 and "win_rate_given_judge" in after  # AlpacaEval's outputs are the references


def test_export_iteration_writes_alpaca_eval_and_arena_hard_files(run):
    cfg, d, rows = run
    prompts = evaluation_prompts(cfg)
    answers = {r["prompt_id"]: r["answers"] for r in d.read_rows(1, "eval_answers.jsonl")}
    res = export_iteration(d, 1, prompts, answers)
    assert res["model"] == "run@iter_1" and res["answers"] == 5 and res["without_answer"] == 0
    outputs = json.loads(d.file(1, RunDir.MODEL_OUTPUTS).read_text())
    assert isinstance(outputs, list) and all(set(o) == ALPACA_EVAL_OUTPUT_KEYS for o in outputs)
    by_instruction = {p.text: answers[p.id][0] for p in prompts}
    assert {o["instruction"]: o["output"] for o in outputs} == by_instruction  # AlpacaEval joins on the text
    assert {o["instruction"] for o in outputs} <= {r["instruction"] for r in rows}
    assert {o["generator"] for o in outputs} == {"run@iter_1"}
    lines = d.file(1, RunDir.ARENA_HARD_ANSWERS).read_text().splitlines()
    answer_rows = [json.loads(x) for x in lines]
    assert len(answer_rows) == 5 and all(set(a) == ARENA_HARD_ANSWER_KEYS for a in answer_rows)
    assert {a["question_id"]: a["choices"] for a in answer_rows} == {
        p.id: [{"index": 0, "turns": [{"content": answers[p.id][0]}]}] for p in prompts}
    assert all(a["model_id"] == "run@iter_1" and isinstance(a["tstamp"], float) for a in answer_rows)


def test_export_run_reexports_every_iteration_from_the_artifacts_alone(run, monkeypatch):
    cfg, d, _ = run

    def no_loading(*args, **kwargs):
        raise AssertionError("an export loads no model and no judge")

    monkeypatch.setattr("stagealign.policy.load_configured_policy", no_loading)
    monkeypatch.setattr("stagealign.judges.registry.build_judge", no_loading)
    for k in (0, 1):
        d.file(k, RunDir.MODEL_OUTPUTS).unlink(missing_ok=True)
    out = export_run(d.root)
    assert sorted(out) == [0, 1]
    for k in (0, 1):
        answers = {r["prompt_id"]: r["answers"][0] for r in d.read_rows(k, "eval_answers.jsonl")}
        outputs = json.loads(d.file(k, RunDir.MODEL_OUTPUTS).read_text())
        assert sorted(o["output"] for o in outputs) == sorted(answers.values())
        assert {o["generator"] for o in outputs} == {f"run@iter_{k}"}
        ids = [json.loads(x)["question_id"] for x in d.file(k, RunDir.ARENA_HARD_ANSWERS).read_text().splitlines()]
        assert sorted(ids) == sorted(answers)


def test_export_iteration_keeps_arena_hard_question_ids(tmp_path):
    es = load_eval_set(write_rows(tmp_path / "question.jsonl", [ARENA_HARD_ROW]))
    d = RunDir(tmp_path / "arena-run")
    export_iteration(d, 2, es.prompts, {ARENA_HARD_ROW["question_id"]: ["X:1\nK:G\nGABc", "second sample"]})
    [row] = [json.loads(x) for x in d.file(2, RunDir.ARENA_HARD_ANSWERS).read_text().splitlines()]
    assert row["question_id"] == "328c149ed45a41c0b9d6f14659e63599" and row["model_id"] == "arena-run@iter_2"
    assert row["choices"] == [{"index": 0, "turns": [{"content": "X:1\nK:G\nGABc"}]}]
    [out] = json.loads(d.file(2, RunDir.MODEL_OUTPUTS).read_text())
    assert out == {"instruction": ARENA_HARD_ROW["turns"][0]["content"], "output": "X:1\nK:G\nGABc",
                   "generator": "arena-run@iter_2"}


def test_a_bad_eval_pool_row_stops_the_run_in_one_line_before_any_model_loads(tmp_path):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    eval_pool = write_rows(tmp_path / "alpaca_eval.jsonl", [ALPACA_EVAL_ROW, {**ALPACA_EVAL_ROW, "instruction": 7}])
    res = cli("run", "--dry-run", *_overrides(tmp_path, model, pool, eval_pool), cwd=HERE)
    assert res.returncode == 0, res.stderr  # the dry run reads the first row only, which is fine
    res = cli("run", *_overrides(tmp_path, model, pool, eval_pool), cwd=HERE)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    [line] = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert f"{eval_pool}:2: field 'instruction'" in line
    assert not RunDir(tmp_path / "run").has(0, "evaluate")


def test_dry_run_checks_the_eval_pool_first_row(tmp_path):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    bad = write_rows(tmp_path / "eval.jsonl", [{"question": "no known field"}])
    cfg = load_config(None, _overrides(tmp_path, model, pool, bad)[1:])
    with pytest.raises(ConfigError, match=re.escape(f"data.eval_pool: {bad}:1: cannot detect the evaluation set")):
        validate(cfg, cuda=False)
    good = write_rows(tmp_path / "alpaca_eval.jsonl", alpaca_rows(7))
    lines = validate(cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_pool": str(good),
                                                                                 "eval_prompts": 5})}), cuda=False)
    assert any("data.eval_pool: local alpaca_eval evaluation set" in x for x in lines)
    assert any("evaluating on 5 of its 7 prompts" in x for x in lines)


def _overrides(tmp: Path, model: Path, pool: Path, eval_pool: Path) -> list[str]:
    """A config file argument for the CLI, then overrides (the library takes the overrides alone)."""
    config = tmp / "run.yaml"
    config.write_text("{}\n")
    return [str(config), f"run_dir={tmp / 'run'}", "iterations=1", f"policy.model={model}", f"data.pool={pool}",
            f"data.eval_pool={eval_pool}", "data.format=generic", "judge.kind=callable", "judge.path=tiny_hf:score",
            "generation.max_new_tokens=6", "boundary.probe_prompts=4", "boundary.min_prompts=2"]

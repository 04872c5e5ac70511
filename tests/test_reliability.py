"""Reliability: bad input, interrupted runs, a full disk, determinism, numerics, bounded memory.

Bad input goes through the command line (in-process with typer's runner, one case as a real
subprocess) and must end in one `error:` line with exit code 2, or in a documented skip counted
in `run_dir/data.json`; never a traceback, never a partial artifact. Interruptions are real
SIGKILLs of a forked run at named points (`STAGEALIGN_FAULT`, see `stagealign.artifacts.fault`),
then an in-process resume that must reproduce the uninterrupted run without redoing a recorded
stage. Runs use the tiny world of conftest; keep this file to a couple of CPU minutes.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import multiprocessing as mp
import os
import re
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import cli, tiny_config, tiny_world_overrides
from stagealign import artifacts
from stagealign.artifacts import ArtifactError
from stagealign.config import dump_config, load_config
from stagealign.pipeline import Run
from stagealign.rundir import STAGES, RunDir, relative, stage_key

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- judges by path
# (`judge.kind=callable`, `judge.path=test_reliability:<name>`; tests/ is on sys.path under pytest)

def distinct_judge(prompts, answers):
    """Distinct words, length near 6, and a deterministic tie-breaker."""
    return [len(set(a.split())) - 0.5 * abs(len(a.split()) - 6) + zlib.crc32(a.encode()) % 997 / 1e4
            for a in answers]


def nan_judge(prompts, answers):
    return [float("nan")] * len(answers)


def text_judge(prompts, answers):
    return ["good" for _ in answers]


JUDGE_CALLS = {"n": 0}


def inf_after_first_call_judge(prompts, answers):
    """Finite on its first call (iteration 0's evaluation, the first thing a run judges), infinite
    from then on: the next call is iteration 1's boundary score."""
    JUDGE_CALLS["n"] += 1
    return [math.inf if JUDGE_CALLS["n"] > 1 else float(len(a)) for a in answers]


# --------------------------------------------------------------------------- helpers

def run_cli(*args: str):
    """`stagealign <args>` in this process: (exit code, stdout, stderr, uncaught exception)."""
    from stagealign.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    exc = None if r.exception is None or isinstance(r.exception, SystemExit) else r.exception
    return r.exit_code, r.stdout, r.stderr, exc


def assert_clean(root: Path) -> None:
    """No temporaries or parked directories; every JSON / JSONL file parses; recorded stages exist."""
    root = Path(root)
    if not root.exists():
        return
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]
    assert not leftovers, f"temporaries left behind: {leftovers}"
    for p in root.rglob("*.json"):
        artifacts.read_json(p)
    for p in root.rglob("*.jsonl"):
        artifacts.read_jsonl(p)
    run = RunDir(root)
    if run.state_path.is_file():
        done = run.done()
        stage_files = {stage_key(k, s): run.stage_path(k, s) for k in range(len(done) + 1) for s in STAGES}
        for key in done:
            assert key in stage_files and stage_files[key].is_file(), f"{key} recorded but its artifact is missing"


def one_error_line(code: int, err: str, exc) -> str:
    assert exc is None, f"uncaught {type(exc).__name__}: {exc}"
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world():
    from stagealign.testbed.world import World

    return World(tiny_config(Path("unused")).world)


@pytest.fixture(scope="module")
def hf_model(world):
    """The tiny world's SFT'd policy as a plain HF model directory (max_position_embeddings 64)."""
    from stagealign.testbed.policies import initial_policy_dir

    return str(initial_policy_dir(world, "boundary", log=lambda m: None))


def pool_rows(world, n: int, start: int = 0) -> list[dict]:
    """Generic-format rows: testbed prompts with the static pool's four answers."""
    from stagealign.data.schema import Prompt, prompt_id
    from stagealign.testbed.provider import static_pool

    prompts = [Prompt(prompt_id(t), t) for t in world.prompts("train")[start:start + n]]
    return [{"prompt": s.prompt, "responses": s.candidates, "models": s.sources}
            for s in static_pool(world, prompts).values()]


def long_prompt(i: int) -> str:
    return f"t{i % 8} m{i % 16} " + " ".join(["m1 m2 m3"] * 25)  # ~80 tokens: more than the 64-token context


def empty_config(run_dir: Path) -> Path:
    """An empty YAML config beside the run directory (everything comes from overrides)."""
    f = Path(run_dir).parent / "empty.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("{}\n")
    return f


def hf_args(run_dir: Path, model: str, pool: Path, *extra: str) -> list[str]:
    return [empty_config(run_dir), f"run_dir={run_dir}", f"policy.model={model}", f"data.pool={pool}",
            "judge.kind=callable", "judge.path=test_reliability:distinct_judge", "iterations=1", "data.eval_prompts=16",
            "boundary.probe_prompts=16", "boundary.min_prompts=8", "boundary.batch_prompts=8",
            "training.batch_size=32", *extra]


def tb_args(run_dir: Path, *extra: str) -> list[str]:
    return [empty_config(run_dir), f"run_dir={run_dir}", *tiny_world_overrides(), "policy.testbed=boundary",
            "iterations=1", "data.eval_prompts=32", "boundary.probe_prompts=16", "boundary.min_prompts=16",
            "boundary.batch_prompts=16", "training.batch_size=32", *extra]


# =========================================================================== 1. bad input

def _config_file(tmp, text: bytes | str):
    f = tmp / "c.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


def _case(tmp, world, model):
    """name -> (argv after `run`, substrings the error line must contain)."""
    good = pool_rows(world, 60)
    run = tmp / "run"
    cases = {}

    f = _config_file(tmp, "trainng:\n  beta: 0.1\n")
    cases["config: unknown key (typo)"] = ([f, f"run_dir={run}"], [str(f), "'trainng'", "did you mean 'training'"])
    cases["config: wrong type"] = (tb_args(run, "training.beta=high"), ["training.beta", "'high'"])
    cases["config: bad value"] = (tb_args(run, "training.method=ppo"), ["training.method", "'ppo'"])
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_bytes(b"seed: 1\nrun_dir: \xff\xfe\n")
    cases["config: bytes not UTF-8"] = ([bad_yaml], [str(bad_yaml), "not valid YAML"])
    cases["config: no such file"] = ([tmp / "missing.yaml"], ["missing.yaml", "no such config file"])

    pool = write_jsonl(tmp / "pool.jsonl", good)
    cases["model: nonexistent path"] = (hf_args(run, str(tmp / "no-such-model"), pool), ["no-such-model"])
    (tmp / "not-a-model").mkdir()
    (tmp / "not-a-model" / "weights.bin").write_bytes(b"0")
    cases["model: directory without config.json"] = (hf_args(run, str(tmp / "not-a-model"), pool),
                                                     ["not-a-model", "no config.json"])

    cases["pool: no such file"] = (hf_args(run, model, tmp / "nope.jsonl"), ["nope.jsonl", "no such file"])
    renamed = write_jsonl(tmp / "renamed.jsonl", [{"question": r["prompt"], "responses": r["responses"]}
                                                  for r in good])
    cases["pool: renamed field"] = (hf_args(run, model, renamed), [f"{renamed}:1", "found fields [question, "])
    broken = write_jsonl(tmp / "broken.jsonl", [*good[:30], '{"prompt": "t1 m2", "responses": ["w1",', *good[30:]])
    cases["pool: broken JSON line in the middle"] = (hf_args(run, model, broken), [f"{broken}:31", "not valid JSON"])
    latin = tmp / "latin1.jsonl"
    latin.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good[:30]) + b'{"prompt": "caf\xe9"}\n'
                      + b"".join(json.dumps(r).encode() + b"\n" for r in good[30:]))
    cases["pool: bytes not UTF-8"] = (hf_args(run, model, latin), [f"{latin}:31", "not valid UTF-8"])
    single = write_jsonl(tmp / "single.jsonl", [{"prompt": r["prompt"], "responses": r["responses"][:1]}
                                                for r in good])
    cases["pool: one candidate per prompt"] = (hf_args(run, model, single),
                                               [str(single), "no usable prompts", "too_few_candidates=60"])
    dup = write_jsonl(tmp / "dup.jsonl", [{"prompt": r["prompt"], "responses": [r["responses"][0]] * 3}
                                          for r in good])
    cases["pool: only duplicate candidates"] = (hf_args(run, model, dup),
                                                [str(dup), "duplicate_answer=120", "too_few_candidates=60"])
    typed = write_jsonl(tmp / "typed.jsonl", [{"prompt": 7, "responses": r["responses"]} for r in good])
    cases["pool: non-string prompts"] = (hf_args(run, model, typed), [str(typed), "bad_prompt=60"])
    few = write_jsonl(tmp / "few.jsonl", good[:2])
    cases["pool: too few prompts to hold out"] = (hf_args(run, model, few), [str(few), "too few"])
    long = write_jsonl(tmp / "long.jsonl", [{"prompt": long_prompt(i), "responses": r["responses"]}
                                            for i, r in enumerate(good[:40])])
    cases["pool: every prompt longer than the context"] = (hf_args(run, model, long),
                                                           ["too long", "context of 64 tokens", "prompt id '"])

    (tmp / "a-file").write_text("x")
    cases["run_dir: below a regular file"] = (tb_args(run, f"run_dir={tmp / 'a-file' / 'run'}"),
                                              ["a-file", "cannot create the run directory"])
    cases["judge: module not importable"] = (tb_args(run, "judge.kind=callable", "judge.path=no_such_mod:f"),
                                             ["no_such_mod"])
    cases["judge: function raises"] = (tb_args(run, "judge.kind=callable", "judge.path=builtins:len"),
                                       ["iteration 0, stage evaluate", "judge 'len' raised TypeError"])
    cases["judge: returns non-numbers"] = (tb_args(run, "judge.kind=callable",
                                                   "judge.path=test_reliability:text_judge"),
                                           ["iteration 0, stage evaluate", "not numbers"])
    cases["judge: NaN scores"] = (tb_args(run, "judge.kind=callable", "judge.path=test_reliability:nan_judge"),
                                  ["iteration 0, stage evaluate", "non-finite score (nan)"])
    cases["training: NaN loss (learning_rate=1e30, 2 steps)"] = (
        tb_args(run, "training.learning_rate=1e30", "data.train_prompts=64", "schedule.kind=static"),
        ["iteration 1", "non-finite", "at step 2"])
    return cases


CASE_NAMES = ["config: unknown key (typo)", "config: wrong type", "config: bad value", "config: bytes not UTF-8",
              "config: no such file", "model: nonexistent path", "model: directory without config.json",
              "pool: no such file", "pool: renamed field", "pool: broken JSON line in the middle",
              "pool: bytes not UTF-8", "pool: one candidate per prompt", "pool: only duplicate candidates",
              "pool: non-string prompts", "pool: too few prompts to hold out",
              "pool: every prompt longer than the context", "run_dir: below a regular file",
              "judge: module not importable", "judge: function raises", "judge: returns non-numbers",
              "judge: NaN scores", "training: NaN loss (learning_rate=1e30, 2 steps)"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing_partial(name, tmp_path, world, hf_model):
    args, expected = _case(tmp_path, world, hf_model)[name]
    code, out, err, exc = run_cli("run", *args)
    line = one_error_line(code, err, exc)
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    run = tmp_path / "run"
    assert_clean(run)
    if name.startswith("training"):  # the failed stage is not recorded and left no model
        assert stage_key(1, "train") not in artifacts.read_json(RunDir(run).state_path)["done"]
        assert not RunDir(run).model(1).exists()


MEASURE_CASES = ["pool: broken JSON line", "checkpoint: nonexistent", "probe: every prompt too long", "judge: NaN"]


@pytest.mark.parametrize("name", MEASURE_CASES)
def test_measure_bad_input_is_one_line_exit_2(name, tmp_path, world, hf_model):
    good = pool_rows(world, 60)
    run = tmp_path / "run"
    if name == "pool: broken JSON line":
        pool = write_jsonl(tmp_path / "p.jsonl", [*good[:10], "{oops", *good[10:]])
        args, expected = hf_args(run, hf_model, pool), [f"{pool}:11"]
    elif name == "checkpoint: nonexistent":
        pool = write_jsonl(tmp_path / "p.jsonl", good)
        args, expected = [*hf_args(run, hf_model, pool), "--checkpoint", str(tmp_path / "gone")], ["gone"]
    elif name == "probe: every prompt too long":
        pool = write_jsonl(tmp_path / "p.jsonl", [{"prompt": long_prompt(i), "responses": r["responses"]}
                                                  for i, r in enumerate(good)])
        args, expected = hf_args(run, hf_model, pool), ["probe prompts are longer than 52 tokens", "prompt id '"]
    else:
        args = tb_args(run, "judge.kind=callable", "judge.path=test_reliability:nan_judge")
        expected = ["nan_judge", "non-finite"]
    code, _, err, exc = run_cli("measure", *args)
    line = one_error_line(code, err, exc)
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"


def test_row_problems_are_skipped_and_counted_and_a_corrected_config_reuses_the_run_dir(tmp_path, world, hf_model,
                                                                                         monkeypatch):
    """Empty / non-string / duplicate / single-candidate / renamed-field rows and prompts longer
    than the context: the run completes and data.json counts every skip; an answer longer than
    the context is truncated by training (max_length = context). The run directory of a start
    that failed on bad input takes the corrected config (nothing was recorded there)."""
    import stagealign.pipeline as pl

    seen = []
    real_train = pl.train_preference

    def spy(policy, rows, cfg, **kw):
        seen.append((cfg.max_length, max(len(policy.tokenizer(policy.format(r["prompt"]) + " " + r["rejected"])
                                             ["input_ids"]) for r in rows)))
        return real_train(policy, rows, cfg, **kw)

    monkeypatch.setattr(pl, "train_preference", spy)
    run = tmp_path / "run"
    code, _, err, exc = run_cli("run", *hf_args(run, hf_model, tmp_path / "typo-pool.jsonl"))
    assert "no such file" in one_error_line(code, err, exc)
    assert RunDir(run).config_path.is_file() and not RunDir(run).state_path.exists()

    good = pool_rows(world, 120)
    a = good[0]["responses"]
    bad = [
        {"prompt": "", "responses": a},                                  # empty_prompt
        {"prompt": 17, "responses": a},                                  # bad_prompt
        {"question": "t1 m1 m1", "responses": a},                        # missing_prompt (renamed field)
        {"prompt": "t1 m2 m2", "responses": [a[0], "  ", a[1]]},         # empty_answer (prompt kept)
        {"prompt": "t1 m3 m3", "responses": [a[0], 5, a[1]]},            # bad_answer (prompt kept)
        {"prompt": "t1 m4 m4", "responses": [a[0], a[0], a[1]]},         # duplicate_answer (prompt kept)
        {"prompt": "t1 m5 m5", "responses": [a[0]]},                     # too_few_candidates
        {"prompt": "t1 m6 m6", "responses": "w1 w2"},                    # missing_answers (not a list)
        *({"prompt": f"t2 m{i} m7", "responses": [" ".join(["w1"] * 70), *a[1:]]} for i in range(8)),  # long answer
        *({"prompt": long_prompt(i) + f" m{i}", "responses": a} for i in range(3)),  # prompt_too_long
    ]
    pool = write_jsonl(tmp_path / "mixed.jsonl", [*good[:60], *bad, *good[60:]])
    code, out, err, exc = run_cli("run", *hf_args(run, hf_model, pool))
    assert exc is None and code == 0, err
    assert "Traceback" not in err and "[data] skipped 3 prompts longer than" in err
    data = artifacts.read_json(run / "data.json")
    for reason in ("empty_prompt", "bad_prompt", "missing_prompt", "empty_answer", "bad_answer",
                   "duplicate_answer", "too_few_candidates", "missing_answers"):
        assert data["skipped"].get(reason, 0) >= 1, (reason, data["skipped"])
    assert data["skipped"]["prompt_too_long"] == 3 and len(data["prompt_too_long_ids"]) == 3
    assert data["max_prompt_tokens"] == 64 - 12
    assert sum(data["prompts"].values()) == 120 + 3 + 8  # kept: 3 rows with one bad answer, 8 with a long one
    assert artifacts.read_json(RunDir(run).stage_path(1, "build"))["pairs"] > 0
    (max_length, longest), = seen
    assert max_length == 64 and longest > 64  # trained, truncated to the context
    assert_clean(run)


def test_prompt_too_long_through_a_real_process(tmp_path, world, hf_model, monkeypatch):
    """The same error line from a real `stagealign run` process (no traceback on the way out)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    pool = write_jsonl(tmp_path / "long.jsonl", [{"prompt": long_prompt(i), "responses": r["responses"]}
                                                 for i, r in enumerate(pool_rows(world, 40))])
    r = cli("run", *hf_args(tmp_path / "run", hf_model, pool))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: all ") and "prompt id '" in r.stderr
    assert_clean(tmp_path / "run")


def test_measure_skips_probe_prompts_longer_than_the_context(world, hf_model):
    from stagealign.boundary import fit_context, measure
    from stagealign.config import BoundaryConfig, GenerationConfig
    from stagealign.data.schema import CandidateSet, Prompt
    from stagealign.judges.base import CallableJudge
    from stagealign.policy import load_policy

    policy = load_policy(hf_model)
    rows = pool_rows(world, 8)
    probe = [Prompt(f"p{i}", r["prompt"]) for i, r in enumerate(rows)] + [Prompt("long", long_prompt(0))]
    pool = {p.id: CandidateSet(p.id, p.text, rows[0]["responses"], ["x"] * 4, "static") for p in probe}
    kept, long, limit = fit_context(policy, probe, 12)
    assert [p.id for p in kept] == [f"p{i}" for i in range(8)] and long[0][0] == "long" and limit == 52
    res = measure(policy, probe, pool, CallableJudge(distinct_judge), BoundaryConfig(sequential=False),
                  GenerationConfig(), seed=0)
    assert res.prompts == 8 and res.skipped_too_long == 1


def test_run_dir_in_use_and_corrupted_artifact_are_one_line_errors(tmp_path):
    run = tmp_path / "run"
    args = tb_args(run)
    with artifacts.RunLock(run):
        code, _, err, exc = run_cli("run", *args)
    assert "another process" in one_error_line(code, err, exc)
    # a recorded stage whose artifact was damaged by hand: named, not silently recomputed
    cfg = load_config(None, args[1:])
    rd = RunDir(run)
    rd.config_path.write_text(dump_config(cfg))
    rd.state_path.write_text(json.dumps({"done": [stage_key(0, "evaluate")]}))
    rd.iteration(0).mkdir()
    rd.stage_path(0, "evaluate").write_text('{"reward": {"mean": 0.1')
    code, _, err, exc = run_cli("run", *args)
    line = one_error_line(code, err, exc)
    assert str(rd.stage_path(0, "evaluate")) in line and "not valid JSON" in line


# =========================================================================== 2. interruptions

KILL_ARGS = ("policy.testbed=boundary", "iterations=1", "schedule.kind=path", "schedule.path=on")


# the stage keys of a one-iteration run, in the order they are recorded
ONE_ITERATION = [stage_key(0, "evaluate"), *(stage_key(1, s) for s in ("measure", "decide", "build", "train",
                                                                       "evaluate"))]


def _stage_files(run: Path, key: str) -> list[Path]:
    rd = RunDir(run)
    k, stage = {stage_key(k, s): (k, s) for k in (0, 1) for s in STAGES}[key]
    extra = {"build": [rd.file(k, "candidates.jsonl"), rd.file(k, "pairs.jsonl")],
             "train": [rd.model(k) / "model.safetensors"], "evaluate": [rd.file(k, "eval_answers.jsonl")]}
    return [rd.stage_path(k, stage), *extra.get(stage, [])]


def _comparable(run: Path) -> dict:
    """Every number and text a run produced, without wall-clock fields and the judge calls paid (a
    resumed run pays for fewer: its judgments are kept on disk, `judges.store`)."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("_seconds", "seconds", "pairs_per_second",
                                                                   "bs_seconds", "bs_cost_vs_epoch", "run_dir",
                                                                   "judge_calls")
                    and not k.startswith("train_") and not k.endswith("_per_second")}
        if isinstance(d, list):
            return [strip(v) for v in d]
        return d

    rd = RunDir(run)
    out = {"summary": strip(artifacts.read_json(rd.summary_path)),
           "state": artifacts.read_json(rd.state_path)["done"]}
    for k in (0, 1):
        d = rd.iteration(k)
        for p in sorted(d.glob("*.json")):
            out[f"{k}/{p.name}"] = strip(artifacts.read_json(p))
        for p in sorted(d.glob("*.jsonl")):
            out[f"{k}/{p.name}"] = artifacts.read_jsonl(p)
    out["weights"] = zlib.crc32((rd.model(1) / "model.safetensors").read_bytes())
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliability") / "reference"
    Run(tiny_config(d, *KILL_ARGS)).execute()
    return d, _comparable(d)


def _killed_child(run_dir: str, point: str) -> None:  # runs in a spawned process
    os.environ[artifacts.FAULT_ENV] = point
    Run(tiny_config(Path(run_dir), *KILL_ARGS)).execute()
    os._exit(0)  # the fault point was not reached


# point -> (stages recorded when killed, whether a temporary is left behind)
KILL_POINTS = {
    f"write:{RunDir('.').state_path.name}": ([], True),  # recording iteration 0's evaluation
    f"{stage_key(1, 'measure')}:after-artifact": (ONE_ITERATION[:1], False),
    f"write:{relative(1, 'pairs.jsonl')}": (ONE_ITERATION[:3], True),  # evaluate 0, measure 1, decide 1
    "train-step:3": (ONE_ITERATION[:4], False),  # mid-TRL, after build 1
    f"write:{relative(1, 'model')}": (ONE_ITERATION[:4], True),
    f"{stage_key(1, 'train')}:after-artifact": (ONE_ITERATION[:4], False),
    f"write:{relative(1, 'eval_answers.jsonl')}": (ONE_ITERATION[:5], True),  # ... train 1
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_at_each_stage_then_resume_matches_uninterrupted(point, tmp_path, reference):
    ref_dir, ref = reference
    run = tmp_path / "killed"
    # spawn, not fork: a forked child of a process whose OpenMP pool is running can deadlock
    child = mp.get_context("spawn").Process(target=_killed_child, args=(str(run), point))
    child.start()
    child.join(300)
    if child.is_alive():  # pragma: no cover - a hang must not hang the suite
        child.kill()
        pytest.fail(f"{point}: child did not finish")
    assert child.exitcode == -9, f"{point}: not killed (exit code {child.exitcode})"

    done_expected, leaves_temp = KILL_POINTS[point]
    state = RunDir(run).state_path
    done = artifacts.read_json(state)["done"] if state.is_file() else []
    assert done == done_expected
    temps = [p for p in run.rglob(".*.tmp")]
    assert bool(temps) == leaves_temp, temps
    for p in list(run.rglob("*.json")) + list(run.rglob("*.jsonl")):
        if not any(part.endswith(".tmp") for part in p.parts):
            artifacts.read_json(p) if p.suffix == ".json" else artifacts.read_jsonl(p)  # whole or absent
    finished = {p: p.stat().st_mtime_ns for key in done for p in _stage_files(run, key)}

    Run(tiny_config(run, *KILL_ARGS)).execute()
    assert_clean(run)
    for p, mtime in finished.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} of a finished stage was rewritten"
    assert _comparable(run) == ref


def _enospc(match):
    real = os.replace

    def replace(src, dst, *a, **k):
        if match(Path(src), Path(dst)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)
    return replace


def test_failed_writes_keep_the_previous_artifact_and_leave_no_temporaries(tmp_path, monkeypatch):
    f, rows = tmp_path / "a.json", tmp_path / "rows.jsonl"
    artifacts.write_json(f, {"v": 1})
    artifacts.write_jsonl(rows, [{"i": 1}])
    model = tmp_path / "model"
    with artifacts.atomic_path(model) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_text("old")

    with monkeypatch.context() as m:  # disk full at the rename
        m.setattr(os, "replace", _enospc(lambda s, d: True))
        with pytest.raises(ArtifactError, match=r"a\.json: cannot write \(No space left on device\)"):
            artifacts.write_json(f, {"v": 2})
    with monkeypatch.context() as m:  # disk full while writing the file
        m.setattr(Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        with pytest.raises(ArtifactError, match="a.json"):
            artifacts.write_json(f, {"v": 3})

    def rows_then_full():
        yield {"i": 2}
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(ArtifactError, match="rows.jsonl"):
        artifacts.write_jsonl(rows, rows_then_full())
    with monkeypatch.context() as m:  # a directory swap whose second rename fails: the old one comes back
        m.setattr(os, "replace", _enospc(lambda s, d: d == model and s.name == "model"))
        with pytest.raises(ArtifactError, match="model"):
            with artifacts.atomic_path(model) as tmp:
                tmp.mkdir()
                (tmp / "w.bin").write_text("new")
    assert artifacts.read_json(f) == {"v": 1} and artifacts.read_jsonl(rows) == [{"i": 1}]
    assert (model / "w.bin").read_text() == "old"
    assert_clean(tmp_path)


def test_recover_restores_a_parked_directory_and_drops_temporaries_only(tmp_path):
    import tempfile

    rd = RunDir(tmp_path)
    it = rd.iteration(1)
    (it / ".model.old").mkdir(parents=True)
    (it / ".model.old" / "w.bin").write_text("weights")
    half = Path(tempfile.mkdtemp(prefix=".pairs.jsonl.", suffix=".tmp", dir=it))
    (half / "pairs.jsonl").write_text('{"half": ')
    mine = [tmp_path / ".notes.old", it / ".scratch.tmp", tmp_path / "sub" / ".x.abcdefgh.tmp"]
    for p in mine:  # the user's own files, a name atomic_path never makes, a folder a run never writes to
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if p.parent.name == "sub" else p.write_text("keep")
    # the run directory and its iteration folders, as RunDir.session() passes them
    cleaned = [rd.root, *(rd.iteration(k) for k in rd.iterations())]
    assert artifacts.recover(cleaned) == {"removed": 1, "restored": 1}
    assert (rd.model(1) / "w.bin").read_text() == "weights" and not half.exists()
    assert all(p.exists() for p in mine)


def test_disk_full_during_a_run_keeps_state_then_rerun_matches(tmp_path, reference, monkeypatch):
    """ENOSPC when recording iteration 1's build stage: the record of finished stages keeps its
    previous content, nothing half written stays, and re-running the command completes with the
    uninterrupted numbers."""
    _, ref = reference
    run = tmp_path / "full"
    state = RunDir(run).state_path

    def full(src, dst):
        return dst.name == state.name and stage_key(1, "build") in src.read_text()

    with monkeypatch.context() as m:
        m.setattr(os, "replace", _enospc(full))
        full_disk = re.escape(state.name) + r": cannot write \(No space left on device\)"
        with pytest.raises(ArtifactError, match=full_disk):
            Run(tiny_config(run, *KILL_ARGS)).execute()
    assert artifacts.read_json(state)["done"] == [stage_key(0, "evaluate"), stage_key(1, "measure"),
                                                  stage_key(1, "decide")]
    assert_clean(run)
    Run(tiny_config(run, *KILL_ARGS)).execute()
    assert _comparable(run) == ref


# =========================================================================== 3. determinism

def test_same_seed_same_numbers_other_seed_other_samples(tmp_path, reference):
    _, ref = reference
    same, other = tmp_path / "same", tmp_path / "other"
    Run(tiny_config(same, *KILL_ARGS)).execute()
    assert _comparable(same) == ref  # pairs.jsonl, candidates, metrics, weights: all identical
    Run(tiny_config(other, *KILL_ARGS, "seed=1")).execute()
    rd = RunDir(other)
    on = [r["candidates"] for r in artifacts.read_jsonl(rd.file(1, "candidates.jsonl"))]
    assert on != [r["candidates"] for r in ref["1/candidates.jsonl"]]
    assert artifacts.read_json(rd.stage_path(1, "measure"))["per_prompt"] != ref["1/measure.json"]["per_prompt"]


# =========================================================================== 4. numerics

def test_nonfinite_judge_later_in_the_run_names_iteration_and_stage(tmp_path):
    run = tmp_path / "inf"
    cfg = tiny_config(run, "policy.testbed=boundary", "iterations=1", "judge.kind=callable",
                      "judge.path=test_reliability:inf_after_first_call_judge")
    from stagealign.judges.base import JudgeError

    JUDGE_CALLS["n"] = 0

    with pytest.raises(JudgeError, match=r"^iteration 1, stage measure: judge .* non-finite score \(inf\)"):
        Run(cfg).execute()
    assert artifacts.read_json(RunDir(run).state_path)["done"] == [stage_key(0, "evaluate")]
    assert not RunDir(run).stage_path(1, "measure").exists()
    assert_clean(run)


def test_training_arguments_carry_gradient_clipping_and_unfiltered_losses(hf_model, monkeypatch, tmp_path):
    import stagealign.training.preference as pref
    from stagealign.config import TrainingConfig
    from stagealign.policy import load_policy

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(*, args, **kw):
        seen["args"] = args
        raise Stop

    monkeypatch.setattr(pref, "DPOTrainer", fake_trainer)
    with pytest.raises(Stop):
        pref.train_preference(load_policy(hf_model), [{"prompt": "t1 m1 m2", "chosen": "w1", "rejected": "w2"}],
                              TrainingConfig(max_grad_norm=0.37), seed=0, work_dir=tmp_path)
    assert seen["args"].max_grad_norm == 0.37
    assert seen["args"].logging_nan_inf_filter is False  # a NaN step loss must reach the logs we check


# =========================================================================== 5. bounded memory

def test_scoring_in_chunks_bounds_each_judge_call_and_changes_no_score(world):
    from stagealign.data.pairs import score_sets
    from stagealign.data.schema import CandidateSet
    from stagealign.judges.base import CallableJudge

    rows = pool_rows(world, 50)
    sizes = []

    def judge(prompts, answers):
        sizes.append(len(answers))
        return distinct_judge(prompts, answers)

    def sets():
        return [CandidateSet(str(i), r["prompt"], r["responses"], r["models"], "static") for i, r in enumerate(rows)]

    whole, parts = sets(), sets()
    score_sets(whole, CallableJudge(judge), chunk=10**9)
    assert sizes == [200]
    sizes.clear()
    score_sets(parts, CallableJudge(judge), chunk=16)
    assert max(sizes) <= 16 + 3 and sum(sizes) == 200
    assert [s.scores for s in whole] == [s.scores for s in parts]


def test_memory_bench_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench" / "memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "pool.jsonl"
    bench.write_pool(path, 300)
    rec = bench.child_pool(path, tmp_path)
    assert rec["prompts"] == 300 and rec["candidates"] >= 1100 and rec["pairs"] > 250
    assert set(rec["phases"]) == {"baseline", "load", "score", "pair", "write"}
    assert len(set(bench.unique_prompts(16000))) == 16000
    g = bench.growth([{"prompts": 10, "phases": {"baseline": {"x": 1.0}, "load": {"x": 2.0}}},
                      {"prompts": 20, "phases": {"baseline": {"x": 1.0}, "load": {"x": 3.0}}}], "load", "x")
    assert g["bytes_per_prompt"] == 2**20 / 10


def test_unbounded_intervals_are_written_as_strict_json(tmp_path):
    """One prompt or one seed gives an infinite interval end; artifacts stay strict JSON (null)."""
    import numpy as np

    path = tmp_path / "m.json"
    artifacts.write_json(path, {"lo": -math.inf, "hi": math.inf, "x": np.float32(1.5), "v": np.array([np.nan, 2.0])})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"lo": None, "hi": None, "x": 1.5, "v": [None, 2.0]}
    artifacts.write_jsonl(tmp_path / "r.jsonl", [{"s": math.nan}])
    assert artifacts.read_jsonl(tmp_path / "r.jsonl") == [{"s": None}]

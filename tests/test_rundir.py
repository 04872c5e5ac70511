"""The run directory's layout and its writing rules (`stagealign.rundir`).

This is the one test file that spells the layout out (``iter_<k>/``, ``state.json``): every other
test builds run-directory paths and stage keys through `RunDir`, `stage_key` and `relative`.
"""

from __future__ import annotations

import json

import pytest

from stagealign import artifacts, distributed
from stagealign.config import ConfigError
from stagealign.rundir import RunDir, relative, stage_key


def _finished_iterations(rd: RunDir, upto: int) -> list[str]:
    """A fake finished run: every stage's JSON, its files, a model and TRL's work folder."""
    rd.write_stage(0, "evaluate", {"k": 0, "stage": "evaluate"})
    rd.write_rows(0, "eval_answers.jsonl", [{"prompt_id": "p0", "answers": ["a"]}])
    for k in range(1, upto + 1):
        for stage in ("measure", "decide", "build", "train", "evaluate"):
            rd.write_stage(k, stage, {"k": k, "stage": stage})
        rd.write_rows(k, "pairs.jsonl", [{"prompt": f"p{k}", "chosen": "a", "rejected": "b"}])
        rd.model(k).mkdir()
        (rd.model(k) / "model.safetensors").write_bytes(bytes([k]) * 16)
        (rd.work(k) / "runs").mkdir(parents=True)
        (rd.work(k) / "runs" / "events.out.tfevents.1").write_bytes(b"log")
    return rd.done()


# --------------------------------------------------------------------------- layout

def test_layout_names_and_paths(tmp_path):
    assert stage_key(1, "measure") == "iter_1/measure"
    assert stage_key(0, "evaluate") == "iter_0/evaluate"
    assert relative(2, "pairs.jsonl") == "iter_2/pairs.jsonl"
    rd = RunDir(tmp_path)
    assert rd.root == tmp_path
    assert rd.state_path == tmp_path / "state.json"
    assert rd.config_path == tmp_path / "config.yaml"
    assert rd.data_path == tmp_path / "data.json"
    assert rd.summary_path == tmp_path / "summary.json"
    assert rd.iteration(0) == tmp_path / "iter_0"
    assert rd.file(1, "pairs.jsonl") == tmp_path / "iter_1" / "pairs.jsonl"
    assert rd.stage_path(1, "measure") == tmp_path / "iter_1" / "measure.json"
    assert rd.model(3) == tmp_path / "iter_3" / "model"
    assert rd.work(3) == tmp_path / "iter_3" / "work"
    # a `write:<relative>` fault point matches the file RunDir writes
    assert rd.file(1, "pairs.jsonl").as_posix().endswith("/" + relative(1, "pairs.jsonl"))
    assert rd.model(1).as_posix().endswith("/" + relative(1, "model"))


def test_a_fresh_directory_has_nothing_recorded(tmp_path):
    rd = RunDir(tmp_path / "absent")
    assert not rd.started and not rd.finished
    assert rd.done() == [] and rd.iterations() == [] and not rd.has(0, "evaluate")
    assert not rd.root.exists(), "reading must not create the directory"


# --------------------------------------------------------------------------- writing stages

def test_write_stage_writes_the_json_then_records_its_key(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_stage(0, "evaluate", {"reward": 0.5})
    assert rd.read_stage(0, "evaluate") == {"reward": 0.5}
    assert json.loads(rd.state_path.read_text()) == {"done": [stage_key(0, "evaluate")]}
    assert rd.done() == [stage_key(0, "evaluate")] and rd.has(0, "evaluate") and rd.started
    rd.write_stage(1, "measure", {"bs": 0.3})
    rd.write_stage(1, "measure", {"bs": 0.4})  # rewriting a stage records it once
    assert rd.done() == [stage_key(0, "evaluate"), stage_key(1, "measure")]
    assert rd.read_stage(1, "measure") == {"bs": 0.4}
    assert not rd.finished
    rd.write_summary({"iterations": []})
    assert rd.finished and rd.read_summary() == {"iterations": []}


def test_a_stage_interrupted_after_its_json_is_not_recorded(tmp_path, monkeypatch):
    """Killed between the stage's JSON and its key (the `<key>:after-artifact` fault point): the
    JSON is on disk, the key is not, so a resumed run redoes the stage."""
    rd = RunDir(tmp_path)
    rd.write_stage(0, "evaluate", {"reward": 0.5})
    point = f"{stage_key(1, 'measure')}:after-artifact"
    seen = []

    class Killed(Exception):
        pass

    def fault(p):
        seen.append(p)
        if p == point:
            raise Killed(p)

    monkeypatch.setattr(artifacts, "fault", fault)
    with pytest.raises(Killed):
        rd.write_stage(1, "measure", {"bs": 0.3})
    assert point in seen
    assert rd.stage_path(1, "measure").is_file() and rd.read_stage(1, "measure") == {"bs": 0.3}
    assert rd.done() == [stage_key(0, "evaluate")]
    assert not rd.has(1, "measure")


def test_has_needs_the_recorded_key_and_the_json(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_stage(1, "build", {"pairs": 3})
    assert rd.has(1, "build")
    rd.stage_path(1, "build").unlink()
    assert stage_key(1, "build") in rd.done() and not rd.has(1, "build")
    artifacts.write_json(rd.stage_path(1, "train"), {"steps": 1})  # JSON present, key never recorded
    assert not rd.has(1, "train")


def test_rows_and_extra_files_round_trip(tmp_path):
    rd = RunDir(tmp_path)
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    rd.write_rows(2, "pairs.jsonl", rows)
    assert list(rd.read_rows(2, "pairs.jsonl")) == rows
    assert artifacts.read_jsonl(rd.file(2, "pairs.jsonl")) == rows
    path = rd.write_file_json(2, "annotations.json", [{"preference": 1.0}])
    assert path == rd.file(2, "annotations.json") and artifacts.read_json(path) == [{"preference": 1.0}]


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    rd = RunDir(tmp_path)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    rd.write_config("seed: 0\n")
    rd.write_stage(0, "evaluate", {"reward": 0.5})
    rd.write_rows(1, "pairs.jsonl", [{"a": 1}])
    rd.write_data({"prompts": {}})
    rd.write_summary({"iterations": []})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the config

def test_write_config_is_fixed_once_a_stage_is_recorded(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_config("seed: 0\ntraining:\n  beta: 0.1\n  method: dpo\n")
    rd.write_config("seed: 1\ntraining:\n  beta: 0.1\n  method: dpo\n")  # nothing recorded yet: a correction
    assert rd.read_config_text() == "seed: 1\ntraining:\n  beta: 0.1\n  method: dpo\n"
    rd.write_stage(0, "evaluate", {"reward": 0.5})
    with pytest.raises(ConfigError, match="different config"):
        rd.write_config("seed: 2\ntraining:\n  beta: 0.1\n  method: dpo\n")
    with pytest.raises(ConfigError, match="different config"):
        rd.write_config("seed: 1\ntraining:\n  beta: 0.2\n  method: dpo\n")
    rd.write_config("training:\n  method: 'dpo'\n  beta: 0.1\nseed: 1\n")  # same data, other order and quoting
    assert rd.read_config_text() == "seed: 1\ntraining:\n  beta: 0.1\n  method: dpo\n"


# --------------------------------------------------------------------------- adopting a prefix

def test_adopt_copies_the_prefix_without_work_and_keeps_only_its_done_keys(tmp_path):
    src = RunDir(tmp_path / "src")
    src_done = _finished_iterations(src, 2)
    dst = RunDir(tmp_path / "dst")
    with dst.session():
        assert dst.adopt(src, 1, redo=("decide",)) is True
    assert dst.iterations() == [0, 1] and not dst.iteration(2).exists()
    assert not dst.work(1).exists() and src.work(1).is_dir(), "TRL's work folder is never copied"
    assert (dst.model(1) / "model.safetensors").read_bytes() == (src.model(1) / "model.safetensors").read_bytes()
    assert dst.file(1, "pairs.jsonl").read_bytes() == src.file(1, "pairs.jsonl").read_bytes()
    assert dst.file(0, "eval_answers.jsonl").read_bytes() == src.file(0, "eval_answers.jsonl").read_bytes()
    assert dst.done() == [stage_key(0, "evaluate"), stage_key(1, "measure"), stage_key(1, "build"),
                          stage_key(1, "train"), stage_key(1, "evaluate")]
    assert not dst.has(1, "decide"), "a redo stage is left unrecorded"
    assert all(dst.has(1, s) for s in ("measure", "build", "train", "evaluate"))
    assert not dst.has(2, "measure")
    assert src.done() == src_done, "the source is not touched"


def test_adopt_lends_the_next_measure(tmp_path):
    src = RunDir(tmp_path / "src")
    _finished_iterations(src, 1)
    peer = RunDir(tmp_path / "peer")
    _finished_iterations(peer, 1)
    peer.write_stage(2, "measure", {"bs": 0.7})
    dst = RunDir(tmp_path / "dst")
    with dst.session():
        assert dst.adopt(src, 1, measure_from=peer)
    assert dst.done()[-1] == stage_key(2, "measure") and dst.has(2, "measure")
    assert dst.read_stage(2, "measure") == {"bs": 0.7}
    assert dst.done()[:-1] == src.done()
    # a peer without that measurement lends nothing
    other = RunDir(tmp_path / "other")
    with other.session():
        assert other.adopt(src, 1, measure_from=src)
    assert other.done() == src.done() and not other.stage_path(2, "measure").exists()


def test_adopt_into_a_started_run_touches_nothing(tmp_path):
    src = RunDir(tmp_path / "src")
    _finished_iterations(src, 2)
    dst = RunDir(tmp_path / "dst")
    dst.write_stage(0, "evaluate", {"own": True})
    before = dst.state_path.read_bytes()
    with dst.session():
        assert dst.adopt(src, 2) is False
    assert dst.state_path.read_bytes() == before
    assert dst.iterations() == [0] and dst.read_stage(0, "evaluate") == {"own": True}


# --------------------------------------------------------------------------- folders and the session

def test_iterations_are_in_numeric_order(tmp_path):
    rd = RunDir(tmp_path)
    for k in (10, 2, 9, 0, 1):
        rd.iteration(k).mkdir()
    (tmp_path / "iter_5").write_text("a file, not an iteration")
    for name in ("iter_x", "iter_3.tmp", ".iter_4.adopt.tmp", "tensorboard"):
        (tmp_path / name).mkdir()
    assert rd.iterations() == [0, 1, 2, 9, 10]


def test_session_takes_the_lock_and_cleans_what_a_killed_writer_left(tmp_path):
    rd = RunDir(tmp_path / "run")
    leftover = rd.iteration(1) / ".x.abcdefgh.tmp"
    leftover.mkdir(parents=True)
    (leftover / "pairs.jsonl").write_text('{"half": ')
    rd.write_rows(1, "pairs.jsonl", [{"a": 1}])
    with rd.session() as held:
        assert held is rd
        assert not leftover.exists()
        assert artifacts.read_jsonl(rd.file(1, "pairs.jsonl")) == [{"a": 1}]
        with pytest.raises(artifacts.RunLockedError, match="another process"):
            with RunDir(tmp_path / "run").session():
                pass
    with RunDir(tmp_path / "run").session():  # released on exit
        pass


def test_session_creates_the_directory(tmp_path):
    rd = RunDir(tmp_path / "a" / "b")
    with rd.session():
        assert rd.root.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(artifacts.ArtifactError, match="cannot create the run directory"):
        with RunDir(tmp_path / "file" / "run").session():
            pass

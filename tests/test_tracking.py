"""The loop's own numbers in TensorBoard and W&B (`stagealign.tracking`), read back from the files
each backend wrote: TensorBoard event files with tensorboard's EventAccumulator, the W&B run's
`.wandb` transaction log of an offline run (no account, no network)."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import time
from pathlib import Path

import pytest

from stagealign.config import load_config
from stagealign.rundir import RunDir
from stagealign.tracking import Tracker

SECRET = "sk-tracking-SECRET-0123456789"

# What the pipeline's stages return (shapes of measure.json / decide.json / evaluate.json / train.json).
MEASURE = {"measured": True, "bs": 0.41, "lo": 0.33, "hi": 0.49, "decision": "static", "threshold": 0.5,
           "prompts": 64, "comparisons": 512, "per_prompt": [0.5, 0.25], "_seconds": 2.0}
DECIDE = {"source": "static", "onpolicy_share": 0.0, "reason": "BS 0.41 < 0.5: injection stage"}
EVALUATE = {"reward": {"mean": 0.37, "lo": 0.30, "hi": 0.44, "n": 32},
            "win_rate_judge": {"mean": 0.62, "lo": 0.55, "hi": 0.69, "n": 32},
            "kl_to_initial": {"mean": 0.8, "lo": 0.6, "hi": 1.0, "n": 32}}
TRAIN = {"steps": 8, "pairs": 64, "final_loss": 0.52, "lora": False,
         "log_history": [{"loss": 0.69, "step": 5}], "_seconds": 9.5}

# The tags pipeline.py's `_scalars` wrote for these results (`<stage>/<key>`, nested keys joined by
# "/", no booleans, strings, private keys, per_prompt or log_history).
TAGS = {
    "measure/bs", "measure/lo", "measure/hi", "measure/threshold", "measure/prompts", "measure/comparisons",
    "decide/onpolicy_share",
    *(f"evaluate/{m}/{s}" for m in ("reward", "win_rate_judge", "kl_to_initial") for s in ("mean", "lo", "hi", "n")),
    "train/steps", "train/pairs", "train/final_loss",
}


def _log_two_iterations(tracker: Tracker) -> None:
    for k in (1, 2):
        tracker.log("measure", k, {**MEASURE, "bs": MEASURE["bs"] + 0.1 * (k - 1)})
        tracker.log("decide", k, DECIDE if k == 1 else {**DECIDE, "source": "onpolicy", "onpolicy_share": 1.0})
        tracker.log("train", k, TRAIN)
        tracker.log("evaluate", k, EVALUATE)


def test_tensorboard_backend_writes_the_pipelines_tags_per_iteration(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path / "run")
    with Tracker.open(run, "tensorboard", None) as tracker:
        _log_two_iterations(tracker)
    events = EventAccumulator(str(run.tensorboard_dir))
    events.Reload()
    assert set(events.Tags()["scalars"]) == TAGS
    bs = events.Scalars("measure/bs")
    assert [(e.step, round(e.value, 6)) for e in bs] == [(1, 0.41), (2, 0.51)]
    assert [e.value for e in events.Scalars("decide/onpolicy_share")] == [0.0, 1.0]
    assert [e.value for e in events.Scalars("evaluate/win_rate_judge/mean")] == pytest.approx([0.62, 0.62])


def test_report_to_none_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    from stagealign import distributed

    with Tracker.open(tmp_path / "run", "none", None) as tracker:
        _log_two_iterations(tracker)
    monkeypatch.setattr(distributed, "is_main", lambda: False)  # rank 1 of a multi-process launch
    with Tracker.open(tmp_path / "run", "tensorboard", None) as tracker:
        _log_two_iterations(tracker)
    assert not (tmp_path / "run").exists()


def test_wandb_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'stagealign\[wandb\]'"):
        Tracker.open(tmp_path / "run", "wandb", None)


# ------------------------------------------------------------------------------ W&B, offline
def _wandb_records(path: Path):
    """The records of a `.wandb` file: W&B's LevelDB-style log (a 7-byte file header, then 32 KiB
    blocks of chunks with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of
    protobuf `Record`s. wandb >= 0.2x no longer ships a Python reader for it."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, head, pos, chunk = 32768, 7, 7, b""
    while pos + head <= len(data):
        if block - pos % block < head:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + head])
        if (kind == 0 and length == 0) or pos + head + length > len(data):  # the end, or a record being written
            break
        chunk += data[pos + head:pos + head + length]
        pos += head + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _finished_records(path: Path, timeout: float = 60.0) -> list:
    """The file's records once it holds the run's exit record: W&B's service process writes the
    log on its own schedule, and may still be flushing it when `finish()` has returned."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install 'stagealign[wandb]'; the dev extra has it)")
def test_wandb_backend_offline_run_history_holds_the_loop_numbers(tmp_path, monkeypatch):
    for var, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_CONFIG_DIR", "wandb-config"),
                     ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "stagealign-test")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = load_config(None, ["run_dir=runs/try", "report_to=wandb", "judge.options.api_key=" + SECRET,
                             "judge.kind=noisy"])

    with Tracker.open(RunDir(tmp_path / "runs" / "try"), cfg.report_to, cfg) as tracker:
        _log_two_iterations(tracker)

    files = sorted((tmp_path / "wandb-dir").rglob("*.wandb"))
    assert len(files) == 1, files
    records = _finished_records(files[0])
    history = [{_item_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    loop = [row for row in history if "iteration" in row]
    by_iteration = {}
    for row in loop:  # the loop's tags sit under loop/ in W&B, apart from TRL's own train/ curves
        by_iteration.setdefault(row["iteration"], {}).update(
            {key.removeprefix("loop/"): v for key, v in row.items() if key.startswith("loop/")})
    assert sorted(by_iteration) == [1, 2]
    for k, row in by_iteration.items():
        assert TAGS <= set(row)  # every tag TensorBoard gets
        assert row["measure/bs"] == pytest.approx(0.41 + 0.1 * (k - 1))
        assert (row["measure/lo"], row["measure/hi"]) == (0.33, 0.49)
        assert row["evaluate/win_rate_judge/mean"] == 0.62 and row["evaluate/kl_to_initial/mean"] == 0.8
        assert not any("per_prompt" in key or "log_history" in key or "_seconds" in key for key in row)
    assert by_iteration[1]["decide/source"] == "static" and by_iteration[2]["decide/source"] == "onpolicy"
    assert by_iteration[1]["measure/decision"] == "static"
    assert not any(key.startswith(("measure/", "train/")) for row in history for key in row)

    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "stagealign-test" and run.display_name.endswith("/runs/try")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["seed"] == 0 and config["judge"]["options"]["api_key"] == "***"
    assert config["generation"]["max_new_tokens"] == cfg.generation.max_new_tokens  # not a secret
    assert SECRET not in files[0].read_bytes().decode("latin-1")  # the key is nowhere in the run's log
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1 and exits[0].exit_code == 0

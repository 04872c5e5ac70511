"""The run directory: the only module that knows its layout, and who may write what in it.

    RUN_DIR/
      config.yaml         the run's config; a resumed run must have the same one
      state.json          {"done": ["iter_0/evaluate", "iter_1/measure", ...]}: finished stages, in order
      data.json           prompts per split after fitting the context, and skip counts
      summary.json        the run's iteration table, written after the last stage
      judgments.sqlite    every judgment the run's judge made (judges.store), reused on resume
      tensorboard/        when report_to=tensorboard
      iter_<k>/           k = 0: the initial policy's evaluation; k >= 1: one iteration
        <stage>.json      each stage's result (measure, decide, build, train, evaluate)
        candidates.jsonl  pairs.jsonl  eval_answers.jsonl  annotations.json
        race_pairs.jsonl  the pairs the race's winner copy trained on (rule race; `pairs.jsonl` holds
                          the rest of the iteration's)
        samples.partial.jsonl  sampling batches of an unfinished build stage (append-only)
        model_outputs.json  arena_hard_answers.jsonl  the evaluation's answers for AlpacaEval /
                          Arena-Hard-Auto (`exports`)
        model/            the policy after iteration k (safetensors)
        work/             TRL's output directory (logs); never copied into another run
        work/race/kept/   the race's winner copy (rule race): training continues from it; removed
                          once the iteration's training is recorded

Who writes: the pipeline, one stage at a time (the stage's artifacts, then its JSON, then its
key in state.json: a stage is done only when it is recorded, so a killed run redoes at most one
stage); the grid, when a cell adopts another cell's finished prefix (`RunDir.adopt`); and
`stagealign annotate`, which adds annotations.json to a finished iteration. Every writer holds
the directory's lock (`RunDir.session`), every write is atomic (`artifacts`), and under a
multi-process launcher only the main process writes: the write methods here do nothing on the
other ranks, which read what the main process wrote after a barrier.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from stagealign import artifacts, distributed

STAGES = ("measure", "decide", "build", "train", "evaluate")

_ITER = "iter_{k}"
_ITER_NAME = re.compile(r"^iter_(\d+)$")


def stage_key(k: int, stage: str) -> str:
    """How state.json (and the fault points of `artifacts.fault`) name stage `stage` of iteration k."""
    return f"{_ITER.format(k=k)}/{stage}"


def relative(k: int, name: str) -> str:
    """A file's path inside any run directory, e.g. for ``write:<path>`` fault points."""
    return f"{_ITER.format(k=k)}/{name}"


def _iteration_of(key: str) -> int:
    return int(_ITER_NAME.match(key.split("/")[0]).group(1))


def _normal_or_none(normal, text: str):
    try:
        return normal(text)
    except ValueError:  # an old config the current schema rejects is a different config
        return None


class _RootFile:
    """An entry directly in the run directory: ``RunDir(root).state_path == root / "state.json"``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: "RunDir | None", owner: type | None = None):
        return self if run is None else run.root / self.name


class RunDir:
    """One run directory. Cheap to make; touches the disk only when asked."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ---- layout -----------------------------------------------------------------------
    config_path = _RootFile("config.yaml")
    state_path = _RootFile("state.json")
    data_path = _RootFile("data.json")
    summary_path = _RootFile("summary.json")
    tensorboard_dir = _RootFile("tensorboard")
    judgments_path = _RootFile("judgments.sqlite")
    #: iter_<k>/ files of the evaluation's answers in the benchmarks' own formats (`stagealign.exports`)
    MODEL_OUTPUTS = "model_outputs.json"  # AlpacaEval's --model_outputs
    ARENA_HARD_ANSWERS = "arena_hard_answers.jsonl"  # Arena-Hard-Auto's model_answer/<model>.jsonl

    def iteration(self, k: int) -> Path:
        return self.root / _ITER.format(k=k)

    def file(self, k: int, name: str) -> Path:
        """``iter_<k>/<name>``: candidates.jsonl, pairs.jsonl, eval_answers.jsonl, annotations.json."""
        return self.iteration(k) / name

    def stage_path(self, k: int, stage: str) -> Path:
        return self.file(k, f"{stage}.json")

    def model(self, k: int) -> Path:
        return self.file(k, "model")

    def work(self, k: int) -> Path:
        return self.file(k, "work")

    def race_copy(self, k: int) -> Path:
        """Where iteration k's race keeps its winner copy until the iteration's training is done."""
        return self.work(k) / "race" / "kept"

    def save_race_copy(self, k: int, policy, state_dict: dict | None = None) -> None:
        if self._writes():
            policy.save(self.race_copy(k), state_dict=state_dict)

    def drop_race_copy(self, k: int) -> None:
        """The iteration's model now holds the winner copy's training: the copy goes (a 7B copy is
        gigabytes on disk)."""
        if self._writes():
            shutil.rmtree(self.race_copy(k), ignore_errors=True)

    def iterations(self) -> list[int]:
        """The iteration folders present, in numeric order (iter_10 after iter_9)."""
        if not self.root.is_dir():
            return []
        found = [int(m.group(1)) for p in self.root.iterdir() if p.is_dir() and (m := _ITER_NAME.match(p.name))]
        return sorted(found)

    # ---- reading ----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """A stage has been recorded (the config is then fixed)."""
        return self.state_path.is_file()

    @property
    def finished(self) -> bool:
        return self.started and self.summary_path.is_file()

    def done(self) -> list[str]:
        return artifacts.read_json(self.state_path)["done"] if self.started else []

    def has(self, k: int, stage: str) -> bool:
        """Stage recorded and its JSON present."""
        return stage_key(k, stage) in self.done() and self.stage_path(k, stage).is_file()

    def read_stage(self, k: int, stage: str) -> Any:
        return artifacts.read_json(self.stage_path(k, stage))

    def read_summary(self) -> dict[str, Any]:
        return artifacts.read_json(self.summary_path)

    def read_rows(self, k: int, name: str) -> Iterator[dict[str, Any]]:
        return artifacts.iter_jsonl(self.file(k, name))

    def read_config_text(self) -> str | None:
        return self.config_path.read_text(encoding="utf-8") if self.config_path.is_file() else None

    # ---- writing (main process only) ---------------------------------------------------
    @staticmethod
    def _writes() -> bool:
        return distributed.is_main()

    def write_stage(self, k: int, stage: str, result: Any) -> None:
        """The stage's JSON, then its key in state.json (the order a resumed run relies on)."""
        if not self._writes():
            return
        artifacts.write_json(self.stage_path(k, stage), result)
        artifacts.fault(f"{stage_key(k, stage)}:after-artifact")
        done = self.done()
        if stage_key(k, stage) not in done:
            self._set_done([*done, stage_key(k, stage)])

    def write_rows(self, k: int, name: str, rows: Iterable[dict[str, Any]]) -> None:
        if self._writes():
            artifacts.write_jsonl(self.file(k, name), rows)

    def write_file_json(self, k: int, name: str, obj: Any) -> Path:
        """An extra JSON artifact of iteration k (e.g. annotations.json); returns its path."""
        path = self.file(k, name)
        if self._writes():
            artifacts.write_json(path, obj)
        return path

    def partial_path(self, k: int, name: str) -> Path:
        """``iter_<k>/<name>.partial.jsonl``: chunks of a stage still in progress (see `append_partial`)."""
        return self.file(k, f"{name}.partial.jsonl")

    def read_partial(self, k: int, name: str) -> list[dict[str, Any]]:
        return artifacts.read_log(self.partial_path(k, name))

    def append_partial(self, k: int, name: str, rows: list[dict[str, Any]]) -> None:
        """Record finished chunks of a long stage (sampling batches) as they finish, so a killed
        stage resumes after its last finished chunk instead of from its start."""
        if self._writes():
            artifacts.append_jsonl(self.partial_path(k, name), rows)

    def drop_partial(self, k: int, name: str) -> None:
        """The stage's own artifact now holds everything: its chunk log goes."""
        if self._writes():
            self.partial_path(k, name).unlink(missing_ok=True)

    def save_model(self, k: int, policy, state_dict: dict | None = None) -> None:
        if self._writes():
            policy.save(self.model(k), state_dict=state_dict)

    def write_data(self, obj: dict[str, Any]) -> None:
        if self._writes():
            artifacts.write_json(self.data_path, obj)

    def write_summary(self, obj: dict[str, Any]) -> None:
        if self._writes():
            artifacts.write_json(self.summary_path, obj)

    def write_config(self, text: str, normal=yaml.safe_load) -> None:
        """Record the run's config; once a stage is recorded it may not change.

        Until then a corrected config (after a bad-input error) replaces the old one. Configs are
        compared as data by `normal` (text -> data; the caller's may also fill defaults, so that a
        field added in a later version is no change), not as text.
        """
        from stagealign.config import ConfigError

        old = self.read_config_text()
        if old is not None and self.started:
            if _normal_or_none(normal, old) != normal(text):
                raise ConfigError(
                    f"{self.root}: this run directory holds a run with a different config (see {self.config_path}); "
                    "resume with the same config or choose another run_dir")
        elif self._writes():
            artifacts.write_text(self.config_path, text)

    def _set_done(self, keys: list[str]) -> None:
        artifacts.write_json(self.state_path, {"done": keys})

    # ---- lifecycle --------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator["RunDir"]:
        """Hold the directory for writing: create it, take its lock (main process), clean what a
        killed predecessor left (`artifacts.recover`), then let every rank go on."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise artifacts.ArtifactError(
                f"{self.root}: cannot create the run directory ({exc.strerror or exc})") from exc
        main = self._writes()
        with artifacts.RunLock(self.root) if main else contextlib.nullcontext():
            if main:
                artifacts.recover([self.root, *(self.iteration(k) for k in self.iterations())])
            distributed.barrier()
            yield self

    def adopt(self, src: "RunDir", upto: int, *, measure_from: "RunDir | None" = None,
              redo: tuple[str, ...] = ()) -> bool:
        """Start this run from iterations 0..`upto` of another run directory; False if already started.

        Valid when both runs share seed and everything but the schedule's later steps (the grid's
        off->off and off->on share iteration 1): stage seeds depend only on (seed, iteration,
        stage), so the adopted artifacts are exactly what this run would have computed. Copies
        (without TRL's work folders), so either run can be deleted or resumed on its own.
        `measure_from` also lends the boundary measurement before iteration upto+1 (it depends
        only on the checkpoint); stages named in `redo` are left unrecorded so this run
        recomputes them (the grid redoes `decide`: cheap, and its reason text is this run's own).
        Call inside `session()`; only the main process copies, the others wait at a barrier.
        """
        if self.started:
            return False
        if self._writes():
            keep = [s for s in src.done() if _iteration_of(s) <= upto and s.split("/")[1] not in redo]
            for k in range(upto + 1):
                s, d = src.iteration(k), self.iteration(k)
                if s.is_dir() and not d.exists():
                    tmp = self.root / f".{d.name}.adopt.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(s, tmp, ignore=shutil.ignore_patterns(self.work(k).name))
                    tmp.rename(d)
            if src.judgments_path.is_file() and not self.judgments_path.exists():
                shutil.copy2(src.judgments_path, self.judgments_path)  # same judge: its verdicts hold here too
            k = upto + 1
            if measure_from is not None and measure_from.has(k, "measure"):
                artifacts.write_json(self.stage_path(k, "measure"), measure_from.read_stage(k, "measure"))
                keep.append(stage_key(k, "measure"))
            self._set_done(keep)
        distributed.barrier()
        return True

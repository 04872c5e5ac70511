"""AlpacaEval and Arena-Hard-Auto, both ways: their prompt sets as a run's evaluation set, and
each iteration's evaluation answers as the files their own evaluators read.

Both directions live here because they share one piece of knowledge: how each benchmark keys its
prompts. AlpacaEval has no ids: its evaluator joins a model's outputs to its reference outputs
on the instruction text, so an instruction is kept exactly as read and exported exactly so.
Arena-Hard keys questions by ``question_id``, which becomes the prompt's id and comes back out
unchanged.

**Reading** (``data.eval_pool``, `load_eval_set`). An evaluation set needs no answers: a row
has one (its reference, for the win rate against references) or none. The pool loader cannot
express that (`data.pool.load_pool` requires ``min_candidates >= 2`` and drops every prompt with
fewer distinct answers), and Arena-Hard's ``turns`` carry no roles, so rows are read here, from
the same sources (`data.sources`: files, directories, ``save_to_disk``, the hub) and with the
loader's own prompt rules (`data.formats.RowReader`: a string or a conversation, not empty, the
id). Formats, detected from the first row when ``auto``:

- ``alpaca_eval``: ``instruction``, optional ``output`` (the reference: AlpacaEval's baseline
  answer), ``generator``, ``dataset`` (the rows of ``tatsu-lab/alpaca_eval``); the id is
  `schema.prompt_id` of the instruction.
- ``arena_hard``: ``question_id``, ``category``, ``cluster``, ``turns: [{"content": ...}]``
  (arena-hard-auto v0.1's question.jsonl, ``lmarena-ai/arena-hard-auto-v0.1``); one turn only, as
  a second turn follows the model's own first answer, which a prompt cannot hold.
- ``prompts``: ``prompt`` (a string or a conversation), optional ``reference`` and
  ``prompt_id`` / ``id``.

Every row must be usable: a bad one raises `LoaderError` naming file, row and field, since an
evaluation set that silently lost rows is another benchmark. A repeated prompt is evaluated once
(counted as ``duplicate_prompt``); one id for two texts is an error.

**Writing** (`export_iteration` after each evaluation, `export_run` for a finished run). Each
prompt's first answer (``eval.samples`` may draw more; the evaluators take one per prompt), as

- AlpacaEval's ``model_outputs.json``: a JSON list of ``{"instruction", "output",
  "generator"}`` for ``alpaca_eval --model_outputs``;
- Arena-Hard-Auto's answer file: a JSON line per question, ``{"question_id", "answer_id",
  "model_id", "choices": [{"index": 0, "turns": [{"content": ...}]}], "tstamp"}``, as its v0.1
  ``gen_answer.py`` writes them. Its evaluator names a model after the file, so copy it to
  ``data/arena-hard-v0.1/model_answer/<model_id>.jsonl``; style control's ``conv_metadata``
  (tiktoken lengths, markdown counts) is what arena-hard-auto's ``add_markdown_info.py`` adds.

The generator / model id is ``<run name>@iter_<k>``. The files sit beside the iteration's
evaluation (named by `rundir.RunDir`) and are written atomically.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stagealign.data.formats import RowReader, SkipCounter
from stagealign.data.schema import Prompt
from stagealign.data.sources import LoaderError, iter_sources

if TYPE_CHECKING:
    from stagealign.rundir import RunDir

#: The evaluation-set formats, in detection order.
EVAL_FORMATS: tuple[str, ...] = ("alpaca_eval", "arena_hard", "prompts")
EvalFormat = Literal["auto", "alpaca_eval", "arena_hard", "prompts"]

#: Per format: the fields a first row must have, the reader of its prompt, its reference field.
_NEEDS: dict[str, tuple[str, ...]] = {
    "alpaca_eval": ("instruction",),
    "arena_hard": ("question_id", "turns"),
    "prompts": ("prompt",),
}
_READERS: dict[str, RowReader] = {
    "alpaca_eval": RowReader(format="alpaca_eval", prompt_field="instruction", id_fields=()),
    "arena_hard": RowReader(format="arena_hard", prompt_field="turns", id_fields=("question_id",)),
    "prompts": RowReader(format="prompts", prompt_field="prompt", id_fields=("prompt_id", "id")),
}
_REFERENCE: dict[str, str | None] = {"alpaca_eval": "output", "arena_hard": None, "prompts": "reference"}


class ExportError(ValueError):
    """A run's evaluation cannot be exported (not a run directory, no finished evaluation)."""


# --------------------------------------------------------------------------------------------
# reading an evaluation set


@dataclass
class EvalSet:
    """An evaluation set's prompts, in file order, with the reference answers it gives."""

    prompts: list[Prompt]
    format: str
    source: str
    skipped: dict[str, int] = field(default_factory=dict)


class _Refuse(SkipCounter):
    """Every row of an evaluation set is kept or the load stops: a problem is one line naming
    file, row and field (a pool skips and counts instead)."""

    def __init__(self) -> None:
        super().__init__(strict=True)

    def problem(self, loc: str, reason: str, fld: str, detail: str) -> None:
        raise LoaderError(f"{loc}: field {fld!r}: {detail}")


def detect_eval_format(row: Mapping[str, Any]) -> str | None:
    """The evaluation-set format of a row, or None. Arena-Hard first (its rows have no
    `instruction`); an UltraFeedback row (`instruction` + `completions`) is no AlpacaEval row."""
    keys = set(row)
    if {"question_id", "turns"} <= keys:
        return "arena_hard"
    if "instruction" in keys and "completions" not in keys:
        return "alpaca_eval"
    if "prompt" in keys:
        return "prompts"
    return None


def eval_format_of(row: Mapping[str, Any], loc: str, format: str = "auto") -> str:
    """The format of an evaluation set whose first row is `row`, at `loc`; `LoaderError` in one
    line naming `loc` and the fields found when the row cannot be read as one."""
    if format not in ("auto", *EVAL_FORMATS):
        raise ValueError(f"eval format must be one of auto, {', '.join(EVAL_FORMATS)}; got {format!r}")
    found = ", ".join(sorted(map(str, row))) or "none"
    fmt = detect_eval_format(row) if format == "auto" else format
    if fmt is None:
        needs = "; ".join(f"{f} needs {' + '.join(n)}" for f, n in _NEEDS.items())
        raise LoaderError(f"{loc}: cannot detect the evaluation set's format: found fields [{found}]; {needs}")
    for name in _NEEDS[fmt]:
        if name not in row:
            raise LoaderError(f"{loc}: evaluation format {fmt!r} needs field {name!r}; found fields [{found}]")
    return fmt


def load_eval_set(source: str | os.PathLike, format: str = "auto", split: str = "train") -> EvalSet:
    """Every prompt of an evaluation set (see the module docstring), in the source's order."""
    fmt: str | None = None
    prompts: list[Prompt] = []
    seen: dict[str, tuple[str, str]] = {}  # id -> (text, where first seen)
    skipped: dict[str, int] = {}
    for _label, rows in iter_sources(os.fspath(source), split):
        for loc, row in rows:
            fmt = fmt or eval_format_of(row, loc, format)
            p = _read_row(fmt, row, loc)
            if p.id in seen:
                text, first = seen[p.id]
                if text != p.text:
                    raise LoaderError(f"{loc}: id {p.id!r} already names another prompt (at {first})")
                skipped["duplicate_prompt"] = skipped.get("duplicate_prompt", 0) + 1
                continue
            seen[p.id] = (p.text, loc)
            prompts.append(p)
    if fmt is None:
        raise LoaderError(f"{source}: no rows")
    return EvalSet(prompts=prompts, format=fmt, source=os.fspath(source), skipped=skipped)


def _read_row(fmt: str, row: Mapping[str, Any], loc: str) -> Prompt:
    if fmt == "arena_hard":
        row = {"question_id": _question_id(row, loc), "turns": _single_turn(row, loc)}
    elif fmt == "alpaca_eval" and row.get("input"):
        raise LoaderError(f"{loc}: field 'input': AlpacaEval instructions have no separate input "
                          "(its own set has none); fold it into the instruction")
    prompt = _READERS[fmt].prompt(dict(row), loc, _Refuse())
    assert prompt is not None  # _Refuse raised otherwise
    ref_field = _REFERENCE[fmt]
    ref = row.get(ref_field) if ref_field else None
    if ref is not None and not isinstance(ref, str):
        raise LoaderError(f"{loc}: field {ref_field!r}: expected the reference answer as a string, "
                          f"got {type(ref).__name__}")
    return replace(prompt, reference=ref if ref and ref.strip() else None)


def _question_id(row: Mapping[str, Any], loc: str) -> str:
    qid = row.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise LoaderError(f"{loc}: field 'question_id': expected a non-empty string, got {qid!r}")
    return str(qid)


def _single_turn(row: Mapping[str, Any], loc: str) -> Any:
    turns = row.get("turns")
    if not isinstance(turns, list) or len(turns) != 1 or not isinstance(turns[0], dict):
        what = f"{len(turns)} turns" if isinstance(turns, list) else type(turns).__name__
        raise LoaderError(f"{loc}: field 'turns': expected one turn [{{\"content\": ...}}], got {what} (a second "
                          "turn follows the model's own first answer, which an evaluation prompt cannot hold)")
    return turns[0].get("content")


# --------------------------------------------------------------------------------------------
# writing the evaluators' files


def default_model_name(run_dir: "RunDir", k: int) -> str:
    """``<run name>@iter_<k>``: the generator / model id the exported files carry."""
    return f"{Path(run_dir.root).resolve().name}@iter_{k}"


def alpaca_eval_outputs(prompts: Iterable[Prompt], answers: Mapping[str, Sequence[str]],
                        generator: str) -> list[dict[str, str]]:
    """AlpacaEval's model outputs: one row per answered prompt, keyed by its instruction text."""
    return [{"instruction": p.text, "output": answers[p.id][0], "generator": generator}
            for p in prompts if answers.get(p.id)]


def arena_hard_answers(prompts: Iterable[Prompt], answers: Mapping[str, Sequence[str]], model_id: str,
                       tstamp: float | None = None) -> list[dict[str, Any]]:
    """Arena-Hard-Auto's answer rows: one per answered question, keyed by its question_id. The
    answer_id is a hash of (model, question, answer), so a re-export gives the same ids."""
    tstamp = time.time() if tstamp is None else tstamp
    rows = []
    for p in prompts:
        if not answers.get(p.id):
            continue
        text = answers[p.id][0]
        digest = hashlib.sha256(f"{model_id}\n{p.id}\n{text}".encode()).hexdigest()[:22]
        rows.append({"question_id": p.id, "answer_id": digest, "model_id": model_id,
                     "choices": [{"index": 0, "turns": [{"content": text}]}], "tstamp": tstamp})
    return rows


def export_iteration(run_dir: "RunDir", k: int, prompts: Sequence[Prompt],
                     answers_by_prompt_id: Mapping[str, Sequence[str]], model_name: str | None = None) -> dict:
    """Write iteration k's evaluation answers as AlpacaEval's model outputs and Arena-Hard's
    answers beside its evaluation; returns what was written (paths, counts, the model name).

    Prompts without an answer (dropped for the context, say) are left out and counted.
    """
    from stagealign.rundir import RunDir

    name = model_name or default_model_name(run_dir, k)
    answered = [p for p in prompts if answers_by_prompt_id.get(p.id)]
    if not answered:
        raise ExportError(f"{run_dir.root}: iteration {k}: none of the {len(prompts)} evaluation prompts has "
                          "an answer to export")
    run_dir.write_file_json(k, RunDir.MODEL_OUTPUTS, alpaca_eval_outputs(answered, answers_by_prompt_id, name))
    run_dir.write_rows(k, RunDir.ARENA_HARD_ANSWERS, arena_hard_answers(answered, answers_by_prompt_id, name))
    return {"model": name, "answers": len(answered), "without_answer": len(prompts) - len(answered),
            "model_outputs": str(run_dir.file(k, RunDir.MODEL_OUTPUTS)),
            "arena_hard_answers": str(run_dir.file(k, RunDir.ARENA_HARD_ANSWERS))}


def export_run(run_dir: str | os.PathLike, iterations: Sequence[int] | None = None,
               log=lambda msg: None) -> dict[int, dict]:
    """(Re)export a run's evaluated iterations (default: all) from its artifacts: the config's
    evaluation prompts (read again from ``data.eval_pool``, or drawn from the pool as the run
    drew them) and each iteration's eval_answers.jsonl. Loads no model and no judge; holds the
    run's lock, so a run still writing there is refused."""
    from stagealign.config import load_config
    from stagealign.providers import evaluation_prompts
    from stagealign.rundir import RunDir

    d = RunDir(run_dir)
    if not d.config_path.is_file():
        raise ExportError(f"{d.root}: not a run directory (no {d.config_path.name})")
    ks = list(iterations) if iterations is not None else [k for k in d.iterations() if d.has(k, "evaluate")]
    missing = [k for k in ks if not d.has(k, "evaluate")]
    if missing or not ks:
        raise ExportError(f"{d.root}: iteration {missing[0] if missing else 0} has no finished evaluation")
    prompts = evaluation_prompts(load_config(d.config_path), log)
    out = {}
    with d.session():
        for k in ks:
            answers = {r["prompt_id"]: r["answers"] for r in d.read_rows(k, "eval_answers.jsonl")}
            out[k] = export_iteration(d, k, prompts, answers)
    return out


__all__ = [
    "EVAL_FORMATS",
    "EvalFormat",
    "EvalSet",
    "ExportError",
    "alpaca_eval_outputs",
    "arena_hard_answers",
    "default_model_name",
    "detect_eval_format",
    "eval_format_of",
    "export_iteration",
    "export_run",
    "load_eval_set",
]

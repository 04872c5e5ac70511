"""Loaders for static preference pools: every format becomes one `Pool` of candidate sets.

Supported inputs (`source`): a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a directory of
such files (or a ``datasets.save_to_disk`` directory), or a Hugging Face hub name ``org/name``
(loaded with ``datasets.load_dataset(name, split=split)``). Formats, detected from the first row
when ``format="auto"``:

- ``ultrafeedback`` (raw UltraFeedback): ``instruction`` (or ``prompt``) and ``completions``, a list
  of ``{model, response, overall_score | fine-grained_score, annotations}``. Candidates are the
  responses, sources the model names, scores the ``overall_score`` (else ``fine-grained_score``;
  the key is chosen once per load from the first row, or given as ``score_field``).
- ``binarized`` (TRL preference format, ``ultrafeedback_binarized``): ``prompt``, ``chosen``,
  ``rejected`` as strings or conversations (lists of ``{role, content}``; the answer is the last
  assistant message, the prompt the user turn(s); without a ``prompt`` column the prompt is taken
  from the conversation in ``chosen``), optional ``score_chosen`` / ``score_rejected``. Rows that
  share a prompt are merged into one candidate set; ``Pool.labels`` records (chosen, rejected)
  candidate indices (the first pair per prompt; ``Pool.label_pairs`` keeps all of them).
- ``generic``: ``prompt`` + ``responses`` (list of strings) with optional ``models`` and
  ``scores`` lists of the same length, or ``prompt`` + ``response`` (one answer per row, optional
  ``model`` / ``score``), rows grouped by prompt.

Any format may carry a reference answer per prompt in a ``reference`` column (a string; the first
one seen for a prompt is kept). Evaluation reports the win rate against it next to the win rate
against the initial policy (AlpacaEval-style instructions with a fixed baseline answer).

Prompt ids come from ``id_field`` when given, else ``prompt_id``, else ``id`` (only for the
formats with one row per prompt, where ``id`` cannot be a per-row id), else a stable short hash
of the prompt text.

Bad-input policy (long runs must neither die late nor train on silently mangled data):

1. Structural problems of the input raise `LoaderError` (a ``ValueError``) at once, with a
   one-line message naming the file, the row (1-based line number for JSONL, ``row N`` otherwise)
   and the field: no such file, unreadable file, bytes that are not UTF-8, a broken JSON line
   anywhere in the file, a first row that matches no format (or lacks a field the requested
   format needs), an input without rows, and an input with no usable prompt left.
2. Row-level content problems are skipped and counted in ``Pool.skipped`` by reason (the first
   occurrence of each reason is logged as a warning with its location); ``strict=True`` raises a
   `LoaderError` for them instead. Reasons: ``missing_prompt``, ``bad_prompt`` (not a string or
   conversation), ``empty_prompt``, ``missing_answers`` (answer field/list absent or not a list:
   row skipped), ``bad_answer`` (non-string answer: that candidate dropped), ``empty_answer``
   (that candidate dropped; for a binarized row the whole pair), ``length_mismatch`` (``models`` /
   ``scores`` list of another length: row skipped), ``bad_score`` (non-numeric / NaN score: kept
   as missing), ``chosen_equals_rejected`` (pair not labelled), ``id_conflict`` (one id, two
   prompt texts: row skipped), ``too_few_candidates`` (prompt with fewer than ``min_candidates``
   distinct answers after cleaning: prompt dropped), ``partial_scores`` (only some candidates of
   a prompt have scores: the prompt's scores are dropped), ``bad_reference`` (a ``reference``
   that is not a non-empty string: the reference ignored, the row kept).
3. Duplicate answers for one prompt (compared after stripping whitespace) are deduplicated, the
   first occurrence kept; duplicates inside one row (or across rows of one-answer-per-row data)
   are counted as ``duplicate_answer``, never raised, and repeats of an answer across binarized
   rows (the normal case for multi-pair data) are merged silently.

`save_pool` / `read_pool` store a cleaned pool as an artifact: a JSONL file of `CandidateSet`
rows (readable with ``CandidateSet.from_row`` by any stage) plus a ``<name>.meta.json`` sidecar
with the source, format, skip counts and labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stagealign.artifacts import ArtifactError, iter_jsonl, read_json, write_json, write_jsonl
from stagealign.data.schema import CandidateSet, Prompt

logger = logging.getLogger(__name__)

Format = Literal["auto", "ultrafeedback", "binarized", "generic"]
FORMATS: tuple[str, ...] = ("ultrafeedback", "binarized", "generic")
#: Optional per-row column holding a reference answer for the prompt (win rate vs reference).
REFERENCE_FIELD = "reference"
FILE_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet")
UNKNOWN_SOURCE = "unknown"

#: Reasons that are recorded but never raised under ``strict=True``.
_NOTES = frozenset({"duplicate_answer"})
_NEEDS = (
    "ultrafeedback needs instruction|prompt + completions; "
    "binarized needs prompt + chosen + rejected (or conversational chosen + rejected); "
    "generic needs prompt + responses, or prompt + response"
)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class LoaderError(ValueError):
    """A pool source is unreadable or not in a supported format; the message says where."""


@dataclass
class Pool:
    """A static preference pool: prompts and one `CandidateSet` (origin "static") per prompt."""

    prompts: list[Prompt]
    sets: dict[str, CandidateSet]  # keyed by prompt id, same order as `prompts`
    labels: dict[str, tuple[int, int]] | None = None  # binarized: (chosen, rejected) indices
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    source: str = ""
    format: str = ""  # the format the rows were read as
    label_pairs: dict[str, list[tuple[int, int]]] | None = None  # binarized: every labelled pair

    def __len__(self) -> int:
        return len(self.sets)


# --------------------------------------------------------------------------------------------
# public API


def load_pool(
    source: str | os.PathLike,
    format: Format = "auto",
    split: str = "train",
    limit: int | None = None,
    prompt_field: str | None = None,
    *,
    id_field: str | None = None,
    score_field: str | None = None,
    strict: bool = False,
    min_candidates: int = 2,
) -> Pool:
    """Load a static preference pool (see the module docstring for formats and bad-input policy).

    `limit` keeps the first `limit` usable prompts (in order of first appearance); reading stops
    as soon as they are collected, so rows of those prompts further down are not merged.
    `prompt_field` names the prompt column when it is not the format's default; `score_field`
    names the per-completion score key for raw UltraFeedback.
    """
    if format not in ("auto", *FORMATS):
        raise ValueError(f"format must be one of auto, {', '.join(FORMATS)}; got {format!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
    if min_candidates < 2:
        raise ValueError(f"min_candidates must be at least 2; got {min_candidates}")
    source = os.fspath(source)
    ctx = _Context(strict)
    groups: dict[str, _Group] = {}
    fmt_seen: str | None = None
    n_ready = 0
    any_rows = False
    stop = False
    for label, rows in _iter_sources(source, split):
        reader: _RowReader | None = None
        for loc, row in rows:
            any_rows = True
            if reader is None:
                reader = _RowReader.for_first_row(
                    row, loc, format, prompt_field=prompt_field, id_field=id_field,
                    score_field=score_field,
                )
                if fmt_seen is not None and reader.format != fmt_seen:
                    raise LoaderError(
                        f"{loc}: rows are in {reader.format!r} format but earlier files were "
                        f"{fmt_seen!r}; load them separately"
                    )
                fmt_seen = reader.format
            if limit is not None and n_ready >= limit:
                head = reader.prompt(row, loc, None)  # quiet: nothing is counted past the limit
                if head is None or head[0] not in groups:
                    stop = True
                    break
            out = reader.read(row, loc, ctx)
            if out is None:
                continue
            pid, text, answers, pair_field = out
            group = groups.get(pid)
            if group is None:
                group = groups[pid] = _Group(pid, text, loc)
            elif group.text != text:
                ctx.problem(loc, "id_conflict", id_field or "id",
                            f"id {pid!r} already used for another prompt text (at {group.loc})")
                continue
            if group.reference is None and row.get(REFERENCE_FIELD) is not None:
                ref = row[REFERENCE_FIELD]
                if isinstance(ref, str) and ref.strip():
                    group.reference = ref
                else:
                    ctx.problem(loc, "bad_reference", REFERENCE_FIELD,
                                "reference is not a non-empty string; ignored")
            was_ready = len(group.candidates) >= min_candidates
            idx = []
            for answer, src, score, fld in answers:
                j, new = group.add(answer, src, score)
                idx.append(j)
                # binarized: chosen == rejected is its own reason below, and answers repeated
                # across rows (several pairs per prompt) are the normal case, merged silently
                if not new and reader.format != "binarized":
                    ctx.problem(loc, "duplicate_answer", fld, "duplicate answer dropped")
            if pair_field is not None:
                if idx[0] == idx[1]:
                    ctx.problem(loc, "chosen_equals_rejected", pair_field,
                                "chosen and rejected are the same answer")
                elif (idx[0], idx[1]) not in group.pairs:
                    group.pairs.append((idx[0], idx[1]))
            if not was_ready and len(group.candidates) >= min_candidates:
                n_ready += 1
        if stop:
            break
    if not any_rows:
        raise LoaderError(f"{source}: no rows")

    prompts: list[Prompt] = []
    sets: dict[str, CandidateSet] = {}
    labels: dict[str, tuple[int, int]] = {}
    label_pairs: dict[str, list[tuple[int, int]]] = {}
    for pid in list(groups):  # pop as we go: a group (with its answer index) is freed once converted,
        group = groups.pop(pid)  # so the pool is not held twice at the end of a large load
        if limit is not None and len(sets) >= limit:
            break
        if len(group.candidates) < min_candidates:
            ctx.problem(group.loc, "too_few_candidates", "prompt",
                        f"prompt {pid!r} has {len(group.candidates)} distinct usable answer(s), "
                        f"needs {min_candidates}")
            continue
        scores: list[float] | None = None
        known = [s for s in group.scores if s is not None]
        if len(known) == len(group.scores):
            scores = [float(s) for s in known]
        elif known:
            ctx.problem(group.loc, "partial_scores", "scores",
                        f"prompt {pid!r}: {len(known)} of {len(group.scores)} answers have a "
                        "score; scores dropped")
        prompts.append(Prompt(id=pid, text=group.text, reference=group.reference))
        sets[pid] = CandidateSet(
            prompt_id=pid, prompt=group.text, candidates=group.candidates,
            sources=group.sources, origin="static", iteration=0, scores=scores,
        )
        if group.pairs:
            labels[pid] = group.pairs[0]
            label_pairs[pid] = list(group.pairs)
    skipped = dict(sorted(ctx.skipped.items()))
    if not sets:
        raise LoaderError(
            f"{source}: no usable prompts after cleaning (skipped: {_fmt_counts(skipped)})"
        )
    if skipped:
        logger.warning("%s: loaded %d prompts; skipped %s", source, len(sets), _fmt_counts(skipped))
    binarized = fmt_seen == "binarized"
    return Pool(
        prompts=prompts, sets=sets, labels=labels if binarized else None, skipped=skipped,
        source=source, format=fmt_seen or "", label_pairs=label_pairs if binarized else None,
    )


def detect_format(row: dict[str, Any], prompt_field: str | None = None) -> str | None:
    """The pool format a row belongs to, or None when it matches none."""
    keys = set(row)
    has_prompt = (prompt_field in keys) if prompt_field else ("prompt" in keys)
    if "completions" in keys and (
        (prompt_field in keys) if prompt_field else bool(keys & {"instruction", "prompt"})
    ):
        return "ultrafeedback"
    if {"chosen", "rejected"} <= keys and (has_prompt or _is_conversation(row["chosen"])):
        return "binarized"
    if has_prompt and keys & {"responses", "response"}:
        return "generic"
    return None


def save_pool(pool: Pool, path: str | os.PathLike) -> None:
    """Write `pool` as JSONL of CandidateSet rows plus a ``<name>.meta.json`` sidecar."""
    path = Path(path)
    meta = {
        "source": pool.source,
        "format": pool.format,
        "skipped": pool.skipped,
        "n_prompts": len(pool.sets),
        "references": {p.id: p.reference for p in pool.prompts if p.reference is not None},
        "labels": None if pool.labels is None else {k: list(v) for k, v in pool.labels.items()},
        "label_pairs": None if pool.label_pairs is None else {
            k: [list(p) for p in v] for k, v in pool.label_pairs.items()
        },
    }
    write_json(_meta_path(path), meta)  # first, so a complete rows file always has its meta
    write_jsonl(path, (pool.sets[p.id].to_row() for p in pool.prompts))


def read_pool(path: str | os.PathLike) -> Pool:
    """Read a pool written by `save_pool`; raises ArtifactError when the file is broken."""
    path = Path(path)
    if not path.exists():
        raise LoaderError(f"{path}: no such file")
    sets: dict[str, CandidateSet] = {}
    for n, row in enumerate(iter_jsonl(path), start=1):
        try:
            cs = CandidateSet.from_row(row)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: row {n}: not a CandidateSet ({exc})") from None
        sets[cs.prompt_id] = cs
    meta_path = _meta_path(path)
    meta: dict[str, Any] = read_json(meta_path) if meta_path.exists() else {}
    refs = meta.get("references") or {}
    prompts = [Prompt(id=pid, text=cs.prompt, reference=refs.get(pid)) for pid, cs in sets.items()]
    labels = meta.get("labels")
    label_pairs = meta.get("label_pairs")
    return Pool(
        prompts=prompts,
        sets=sets,
        labels=None if labels is None else {k: (int(v[0]), int(v[1])) for k, v in labels.items()},
        skipped={k: int(v) for k, v in (meta.get("skipped") or {}).items()},
        source=meta.get("source", str(path)),
        format=meta.get("format", ""),
        label_pairs=None if label_pairs is None else {
            k: [(int(a), int(b)) for a, b in v] for k, v in label_pairs.items()
        },
    )


# --------------------------------------------------------------------------------------------
# reading rows from files, directories and the hub

_Rows = Iterator[tuple[str, dict[str, Any]]]


def _iter_sources(source: str, split: str) -> Iterator[tuple[str, _Rows]]:
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _iter_directory(path, split)
    elif path.exists():
        yield str(path), _iter_file(path)
    elif _looks_like_hub_name(source):
        yield f"{source}[{split}]", _iter_hub(source, split)
    else:
        raise LoaderError(f"{source}: no such file")


def _looks_like_hub_name(source: str) -> bool:
    return bool(_HUB_NAME.match(source)) and not source.lower().endswith(FILE_SUFFIXES)


def _iter_file(path: Path) -> _Rows:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl_rows(path)
    if suffix == ".json":
        return _iter_json_rows(path)
    if suffix == ".parquet":
        return _iter_parquet_rows(path)
    raise LoaderError(f"{path}: unsupported file type {suffix!r} (expected {', '.join(FILE_SUFFIXES)})")


def _iter_jsonl_rows(path: Path) -> _Rows:
    # Like artifacts.iter_jsonl, but keeps line numbers for row-level messages.
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise LoaderError(f"{path}:{lineno}: bytes are not valid UTF-8") from None
            except json.JSONDecodeError as exc:
                raise LoaderError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LoaderError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{lineno}", row


def _iter_json_rows(path: Path) -> _Rows:
    """A ``.json`` file holds either a JSON array of objects or JSON lines."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read ({exc.strerror})") from None
    if not data.lstrip().startswith(b"["):
        if data.strip().count(b"\n"):  # a pretty-printed single object is neither form
            try:
                whole = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                whole = None
            if isinstance(whole, dict):
                keys = ", ".join(sorted(map(str, whole)))
                raise LoaderError(
                    f"{path}:1: expected a JSON array of row objects or JSON lines, got one "
                    f"JSON object with fields [{keys}]"
                )
        yield from _iter_jsonl_rows(path)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LoaderError(f"{path}:{line}: bytes are not valid UTF-8") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoaderError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise LoaderError(f"{path} row {n}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} row {n}", row


def _iter_parquet_rows(path: Path) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise LoaderError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield f"{path} row {n}", row
    except (OSError, pa.ArrowException) as exc:
        raise LoaderError(f"{path} row {n + 1}: unreadable Parquet data ({_first_line(exc)})") from None


def _iter_directory(path: Path, split: str) -> Iterator[tuple[str, _Rows]]:
    if any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        yield str(path), _iter_dataset_rows(_load_from_disk(path, split), f"{path}[{split}]")
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise LoaderError(f"{path}: no {', '.join(FILE_SUFFIXES)} files in this directory")

    def names(p: Path) -> set[str]:  # hub layouts: train.jsonl, train-00000-of-00002.parquet, train/x
        rel = p.relative_to(path)
        stem = rel.name.split(".")[0]
        return {*rel.parts[:-1], stem, stem.split("-")[0]}

    def family(p: Path) -> tuple[str, ...]:  # shards of one split share it
        rel = p.relative_to(path)
        return (*rel.parts[:-1], rel.name.split(".")[0].split("-")[0])

    matching = [p for p in files if split in names(p)]
    if matching:
        files = matching
    elif len({family(p) for p in files}) > 1:
        found = ", ".join(str(p.relative_to(path)) for p in files[:8])
        more = f", ... ({len(files)} files)" if len(files) > 8 else ""
        raise LoaderError(f"{path}: no file for split {split!r} (found: {found}{more})")
    for p in files:
        yield str(p), _iter_file(p)


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
        raise LoaderError(f"{path}: cannot load dataset directory ({_first_line(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise LoaderError(f"{path}: no split {split!r} (found: {', '.join(ds)})")
        ds = ds[split]
    return ds


def _iter_hub(name: str, split: str) -> _Rows:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing split, ...
        raise LoaderError(
            f"{name}: not a local path, and loading it from the Hugging Face hub (split "
            f"{split!r}) failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    yield from _iter_dataset_rows(ds, f"{name}[{split}]")


def _iter_dataset_rows(ds: Any, label: str) -> _Rows:
    for n, row in enumerate(ds, start=1):
        yield f"{label} row {n}", dict(row)


# --------------------------------------------------------------------------------------------
# turning rows into (prompt, answers)


class _Skip(Exception):
    """The current row is skipped (already counted)."""


class _Context:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: dict[str, int] = {}

    def problem(self, loc: str, reason: str, fld: str, detail: str) -> None:
        message = f"{loc}: field {fld!r}: {detail}"
        if self.strict and reason not in _NOTES:
            raise LoaderError(message + f" ({reason}; strict=True)")
        if reason not in self.skipped:
            logger.warning("%s (%s; further cases only counted)", message, reason)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class _Quiet(_Context):
    """Counts nothing, raises _Skip on any problem (used to peek at rows past the limit)."""

    def __init__(self) -> None:
        super().__init__(False)

    def problem(self, loc: str, reason: str, fld: str, detail: str) -> None:
        raise _Skip


@dataclass
class _Group:
    prompt_id: str
    text: str
    loc: str  # where the prompt was first seen
    candidates: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    reference: str | None = None
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, answer: str, source: str, score: float | None) -> tuple[int, bool]:
        key = answer.strip()
        j = self._index.get(key)
        if j is not None:
            if self.scores[j] is None and score is not None:
                self.scores[j] = score
            return j, False
        self._index[key] = len(self.candidates)
        self.candidates.append(answer)
        self.sources.append(source)
        self.scores.append(score)
        return len(self.candidates) - 1, True


_Answer = tuple[str, str, "float | None", str]  # answer, source, score, field
_RowOut = tuple[str, str, list[_Answer], "str | None"]


@dataclass
class _RowReader:
    """Reads rows of one format; fields are fixed from the first row of each file."""

    format: str
    prompt_field: str
    id_fields: tuple[str, ...]
    mode: str = ""  # generic: "responses" | "response"
    score_field: str | None = None

    @classmethod
    def for_first_row(
        cls, row: dict[str, Any], loc: str, fmt: str, *, prompt_field: str | None,
        id_field: str | None, score_field: str | None,
    ) -> "_RowReader":
        found = ", ".join(sorted(map(str, row))) or "none"
        if fmt == "auto":
            detected = detect_format(row, prompt_field)
            if detected is None:
                hint = f" (prompt_field={prompt_field!r})" if prompt_field else ""
                raise LoaderError(
                    f"{loc}: cannot detect the pool format{hint}: found fields [{found}]; {_NEEDS}"
                )
            fmt = detected

        def need(*names: str) -> None:
            for name in names:
                if name not in row:
                    raise LoaderError(
                        f"{loc}: format {fmt!r} needs field {name!r}; found fields [{found}]"
                    )

        mode = ""
        if fmt == "ultrafeedback":
            pf = prompt_field or ("instruction" if "instruction" in row else "prompt")
            need(pf, "completions")
            comps = row["completions"]
            if isinstance(comps, list) and comps and isinstance(comps[0], dict):
                if "response" not in comps[0]:
                    inner = ", ".join(sorted(map(str, comps[0])))
                    raise LoaderError(
                        f"{loc}: format 'ultrafeedback' needs field 'completions[0].response'; "
                        f"found fields [{inner}]"
                    )
                if score_field is None:
                    score_field = next(
                        (k for k in ("overall_score", "fine-grained_score") if k in comps[0]), None
                    )
            ids = (id_field,) if id_field else ("prompt_id", "id")
        elif fmt == "binarized":
            pf = prompt_field or "prompt"
            need("chosen", "rejected")
            if pf not in row and not _is_conversation(row["chosen"]):
                need(pf)
            ids = (id_field,) if id_field else ("prompt_id",)
        else:
            pf = prompt_field or "prompt"
            need(pf)
            if "responses" in row:
                mode = "responses"
                ids = (id_field,) if id_field else ("prompt_id", "id")
            elif "response" in row:
                mode = "response"
                ids = (id_field,) if id_field else ("prompt_id",)
            else:
                need("responses")
                raise AssertionError  # pragma: no cover - need() raised
        return cls(format=fmt, prompt_field=pf, id_fields=ids, mode=mode, score_field=score_field)

    # -- the prompt ---------------------------------------------------------------------------

    def prompt(self, row: dict[str, Any], loc: str, ctx: _Context | None) -> tuple[str, str] | None:
        """(prompt id, prompt text), or None when the row is skipped (ctx None: count nothing)."""
        try:
            return self._prompt(row, loc, ctx or _Quiet())
        except _Skip:
            return None

    def _prompt(self, row: dict[str, Any], loc: str, ctx: _Context) -> tuple[str, str]:
        pf = self.prompt_field
        value = row.get(pf)
        if value is None and self.format == "binarized" and _is_conversation(row.get("chosen")):
            value = _prompt_turns(row["chosen"])
            pf = "chosen"
        if value is None:
            _fail(ctx, loc, "missing_prompt", pf, "missing")
        if isinstance(value, str):
            text = value
        elif _is_conversation(value):
            text = _join_user_turns(value)
            if text is None:
                _fail(ctx, loc, "bad_prompt", pf, "conversation has a non-string user turn")
        else:
            _fail(ctx, loc, "bad_prompt", pf, f"expected a string, got {type(value).__name__}")
        if not text.strip():
            _fail(ctx, loc, "empty_prompt", pf, "empty prompt")
        pid = None
        for name in self.id_fields:
            v = row.get(name)
            if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
                pid = str(v).strip()
                break
        return pid or prompt_hash(text), text

    # -- the answers --------------------------------------------------------------------------

    def read(self, row: dict[str, Any], loc: str, ctx: _Context) -> _RowOut | None:
        try:
            pid, text = self._prompt(row, loc, ctx)
            if self.format == "ultrafeedback":
                return pid, text, self._ultrafeedback(row, loc, ctx), None
            if self.format == "binarized":
                return pid, text, self._binarized(row, loc, ctx), "chosen/rejected"
            if self.mode == "responses":
                return pid, text, self._responses(row, loc, ctx), None
            return pid, text, self._response(row, loc, ctx), None
        except _Skip:
            return None

    def _ultrafeedback(self, row: dict[str, Any], loc: str, ctx: _Context) -> list[_Answer]:
        comps = row.get("completions")
        if not isinstance(comps, list):
            what = "missing" if comps is None else f"expected a list, got {type(comps).__name__}"
            _fail(ctx, loc, "missing_answers", "completions", what)
        out: list[_Answer] = []
        for i, comp in enumerate(comps):
            fld = f"completions[{i}]"
            if not isinstance(comp, dict):
                ctx.problem(loc, "bad_answer", fld, f"expected an object, got {type(comp).__name__}")
                continue
            answer = _checked_answer(comp.get("response"), loc, f"{fld}.response", ctx)
            if answer is None:
                continue
            model = comp.get("model")
            score = None
            if self.score_field is not None and comp.get(self.score_field) is not None:
                score = _checked_score(comp[self.score_field], loc, f"{fld}.{self.score_field}", ctx)
            out.append((answer, _source(model), score, f"{fld}.response"))
        return out

    def _binarized(self, row: dict[str, Any], loc: str, ctx: _Context) -> list[_Answer]:
        out: list[_Answer] = []
        for name in ("chosen", "rejected"):
            value = row.get(name)
            if value is None:
                _fail(ctx, loc, "missing_answers", name, "missing")
            if _is_conversation(value):
                value = _last_assistant(value)
                if value is None:
                    _fail(ctx, loc, "bad_answer", name, "conversation has no assistant message "
                          "with string content")
            answer = _checked_answer(value, loc, name, ctx)
            if answer is None:
                raise _Skip  # a pair with one side missing is no pair
            model = row.get(f"{name}_model")
            score = None
            if row.get(f"score_{name}") is not None:
                score = _checked_score(row[f"score_{name}"], loc, f"score_{name}", ctx)
            out.append((answer, _source(model), score, name))
        return out

    def _responses(self, row: dict[str, Any], loc: str, ctx: _Context) -> list[_Answer]:
        responses = row.get("responses")
        if not isinstance(responses, list):
            what = "missing" if responses is None else f"expected a list, got {type(responses).__name__}"
            _fail(ctx, loc, "missing_answers", "responses", what)
        extra: dict[str, list[Any]] = {}
        for name in ("models", "scores"):
            value = row.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or len(value) != len(responses):
                got = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
                _fail(ctx, loc, "length_mismatch", name,
                      f"expected a list of {len(responses)} items (one per response), got {got}")
            extra[name] = value
        out: list[_Answer] = []
        for i, value in enumerate(responses):
            answer = _checked_answer(value, loc, f"responses[{i}]", ctx)
            if answer is None:
                continue
            model = extra["models"][i] if "models" in extra else None
            score = None
            if "scores" in extra and extra["scores"][i] is not None:
                score = _checked_score(extra["scores"][i], loc, f"scores[{i}]", ctx)
            out.append((answer, _source(model), score, f"responses[{i}]"))
        return out

    def _response(self, row: dict[str, Any], loc: str, ctx: _Context) -> list[_Answer]:
        if row.get("response") is None:
            _fail(ctx, loc, "missing_answers", "response", "missing")
        answer = _checked_answer(row["response"], loc, "response", ctx)
        if answer is None:
            raise _Skip
        model = row.get("model")
        score = None
        if row.get("score") is not None:
            score = _checked_score(row["score"], loc, "score", ctx)
        return [(answer, _source(model), score, "response")]


def prompt_hash(text: str) -> str:
    """A stable short id for a prompt text (whitespace at the ends ignored)."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def _source(model: Any) -> str:
    return model if isinstance(model, str) and model.strip() else UNKNOWN_SOURCE


def _fail(ctx: _Context, loc: str, reason: str, fld: str, detail: str) -> None:
    ctx.problem(loc, reason, fld, detail)
    raise _Skip


def _checked_answer(value: Any, loc: str, fld: str, ctx: _Context) -> str | None:
    if not isinstance(value, str):
        what = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        ctx.problem(loc, "bad_answer", fld, what)
        return None
    if not value.strip():
        ctx.problem(loc, "empty_answer", fld, "empty answer")
        return None
    return value


def _checked_score(value: Any, loc: str, fld: str, ctx: _Context) -> float | None:
    try:
        if isinstance(value, bool):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError):
        ctx.problem(loc, "bad_score", fld, f"not a number: {_short(value)}")
        return None
    if not math.isfinite(score):
        ctx.problem(loc, "bad_score", fld, f"not a finite number: {score}")
        return None
    return score


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    )


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def _join_user_turns(messages: list[dict[str, Any]]) -> str | None:
    turns = [_content_text(m["content"]) for m in messages if m.get("role") == "user"]
    if any(t is None for t in turns):
        return None
    return "\n\n".join(t for t in turns if t is not None)


def _prompt_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages before the last assistant one (the implicit prompt of a conversation)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    head = messages[:last] if last is not None else messages
    return head or None


def _last_assistant(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "assistant":
            return _content_text(m["content"])
    return None


def _meta_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.meta.json")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "nothing"


__all__ = [
    "FORMATS",
    "LoaderError",
    "Pool",
    "detect_format",
    "load_pool",
    "prompt_hash",
    "read_pool",
    "save_pool",
]

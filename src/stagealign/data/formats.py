"""Row formats of static preference pools: one raw row in, a prompt and its answers out.

Kept apart from where rows come from (`stagealign.data.sources`) and how rows are merged into a
pool (`stagealign.data.pool`): a format only knows the fields of one row, so a new format is a
new branch here and nothing else changes. Formats, detected from the first row when
``format="auto"`` (`detect_format`):

- ``ultrafeedback`` (raw UltraFeedback): ``instruction`` (or ``prompt``) and ``completions``, a list
  of ``{model, response, overall_score | fine-grained_score, annotations}``. Candidates are the
  responses, sources the model names, scores the ``overall_score`` (else ``fine-grained_score``;
  the key is chosen once per load from the first row, or given as ``score_field``).
- ``binarized`` (TRL preference format, ``ultrafeedback_binarized``): ``prompt``, ``chosen``,
  ``rejected`` as strings or conversations (lists of ``{role, content}``; the answer is the last
  assistant message, the prompt the user turn(s); without a ``prompt`` column the prompt is taken
  from the conversation in ``chosen``), optional ``score_chosen`` / ``score_rejected``.
- ``generic``: ``prompt`` + ``responses`` (list of strings) with optional ``models`` and
  ``scores`` lists of the same length, or ``prompt`` + ``response`` (one answer per row, optional
  ``model`` / ``score``).

Prompt ids come from ``id_field`` when given, else ``prompt_id``, else ``id`` (only for the
formats with one row per prompt, where ``id`` cannot be a per-row id), else
`stagealign.data.schema.prompt_id` of the prompt text.

A first row that matches no format (or lacks a field the requested format needs) raises
`LoaderError`. Content problems of single rows are counted by reason in a `SkipCounter` (the
first case of each reason logged with its location; ``strict=True`` raises instead):
``missing_prompt``, ``bad_prompt`` (not a string or conversation), ``empty_prompt``,
``missing_answers`` (answer field/list absent or not a list: row skipped), ``bad_answer``
(non-string answer: that candidate dropped), ``empty_answer`` (that candidate dropped; for a
binarized row the whole pair), ``length_mismatch`` (``models`` / ``scores`` list of another
length: row skipped), ``bad_score`` (non-numeric / NaN score: kept as missing).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from stagealign.data.schema import prompt_id
from stagealign.data.sources import LoaderError

logger = logging.getLogger(__name__)

Format = Literal["auto", "ultrafeedback", "binarized", "generic"]
FORMATS: tuple[str, ...] = ("ultrafeedback", "binarized", "generic")
UNKNOWN_SOURCE = "unknown"

#: Reasons that are recorded but never raised under ``strict=True``.
_NOTES = frozenset({"duplicate_answer"})
_NEEDS = (
    "ultrafeedback needs instruction|prompt + completions; "
    "binarized needs prompt + chosen + rejected (or conversational chosen + rejected); "
    "generic needs prompt + responses, or prompt + response"
)

Answer = tuple[str, str, "float | None", str]  # answer, source, score, field
#: (prompt id, prompt text, answers, the pair's field for a binarized row else None)
RowOut = tuple[str, str, list[Answer], "str | None"]


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


class _Skip(Exception):
    """The current row is skipped (already counted)."""


class SkipCounter:
    """Counts skipped content by reason; logs the first case of each, or raises when strict."""

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


class _Quiet(SkipCounter):
    """Counts nothing, raises _Skip on any problem (used to peek at rows past the limit)."""

    def __init__(self) -> None:
        super().__init__(False)

    def problem(self, loc: str, reason: str, fld: str, detail: str) -> None:
        raise _Skip


@dataclass
class RowReader:
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
    ) -> "RowReader":
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

    def prompt(self, row: dict[str, Any], loc: str, ctx: SkipCounter | None) -> tuple[str, str] | None:
        """(prompt id, prompt text), or None when the row is skipped (ctx None: count nothing)."""
        try:
            return self._prompt(row, loc, ctx or _Quiet())
        except _Skip:
            return None

    def _prompt(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> tuple[str, str]:
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
        return pid or prompt_id(text), text

    # -- the answers --------------------------------------------------------------------------

    def read(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> RowOut | None:
        """The row's prompt and answers, or None when the row is skipped (counted in `ctx`)."""
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

    def _ultrafeedback(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> list[Answer]:
        out: list[Answer] = []
        for i, comp in enumerate(_answer_list(row, "completions", loc, ctx)):
            fld = f"completions[{i}]"
            if not isinstance(comp, dict):
                ctx.problem(loc, "bad_answer", fld, f"expected an object, got {type(comp).__name__}")
                continue
            answer = _checked_answer(comp.get("response"), loc, f"{fld}.response", ctx)
            if answer is None:
                continue
            sf = self.score_field
            score = _checked_score(comp.get(sf) if sf is not None else None, loc, f"{fld}.{sf}", ctx)
            out.append((answer, _source(comp.get("model")), score, f"{fld}.response"))
        return out

    def _binarized(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> list[Answer]:
        out: list[Answer] = []
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
            score = _checked_score(row.get(f"score_{name}"), loc, f"score_{name}", ctx)
            out.append((answer, _source(row.get(f"{name}_model")), score, name))
        return out

    def _responses(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> list[Answer]:
        responses = _answer_list(row, "responses", loc, ctx)
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
        out: list[Answer] = []
        for i, value in enumerate(responses):
            answer = _checked_answer(value, loc, f"responses[{i}]", ctx)
            if answer is None:
                continue
            model = extra["models"][i] if "models" in extra else None
            score = _checked_score(extra["scores"][i] if "scores" in extra else None, loc,
                                   f"scores[{i}]", ctx)
            out.append((answer, _source(model), score, f"responses[{i}]"))
        return out

    def _response(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> list[Answer]:
        if row.get("response") is None:
            _fail(ctx, loc, "missing_answers", "response", "missing")
        answer = _checked_answer(row["response"], loc, "response", ctx)
        if answer is None:
            raise _Skip
        score = _checked_score(row.get("score"), loc, "score", ctx)
        return [(answer, _source(row.get("model")), score, "response")]


def _source(model: Any) -> str:
    return model if isinstance(model, str) and model.strip() else UNKNOWN_SOURCE


def _fail(ctx: SkipCounter, loc: str, reason: str, fld: str, detail: str) -> None:
    ctx.problem(loc, reason, fld, detail)
    raise _Skip


def _answer_list(row: dict[str, Any], name: str, loc: str, ctx: SkipCounter) -> list[Any]:
    """The row's list of answers under `name`; a missing or non-list value skips the row."""
    value = row.get(name)
    if not isinstance(value, list):
        what = "missing" if value is None else f"expected a list, got {type(value).__name__}"
        _fail(ctx, loc, "missing_answers", name, what)
    return value


def _checked_answer(value: Any, loc: str, fld: str, ctx: SkipCounter) -> str | None:
    if not isinstance(value, str):
        what = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        ctx.problem(loc, "bad_answer", fld, what)
        return None
    if not value.strip():
        ctx.problem(loc, "empty_answer", fld, "empty answer")
        return None
    return value


def _checked_score(value: Any, loc: str, fld: str, ctx: SkipCounter) -> float | None:
    """The score as a finite float; None when absent (quietly) or unusable (counted)."""
    if value is None:
        return None
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


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


__all__ = [
    "FORMATS",
    "UNKNOWN_SOURCE",
    "Answer",
    "Format",
    "RowOut",
    "RowReader",
    "SkipCounter",
    "detect_format",
]

"""Row formats of preference pools and candidate files: one raw row in, a prompt and its answers out.

Kept apart from where rows come from (`stagealign.data.sources`) and how rows are merged into a
pool (`stagealign.data.pool`): a format only knows the fields of one row, so a new format is a
new entry here and nothing else changes. Formats, detected from the first row when
``format="auto"`` (`detect_format`; the first signature that matches wins, and each is checked
before the formats whose signature it contains, so every format's own rows are detected as it):

- ``ultrafeedback`` (raw UltraFeedback): ``instruction`` (or ``prompt``) and ``completions``, a list
  of ``{model, response, overall_score | fine-grained_score, annotations}``. Candidates are the
  responses, sources the model names, scores the ``overall_score`` (else ``fine-grained_score``;
  the key is chosen once per load from the first row, or given as ``score_field``).
- ``simpo`` (SimPO's ``on_policy_data_gen`` files and its published sets such as
  ``princeton-nlp/llama3-ultrafeedback-armorm``): ``prompt`` + ``all_generated_responses`` (every
  candidate), optional ``all_rm_scores`` (their reward-model scores) and ``prompt_id``; the
  ``chosen`` / ``rejected`` conversations those sets also carry are two of the candidates and are
  not read. Signature: ``all_generated_responses`` (checked before ``binarized``).
- ``binarized`` (TRL preference format, ``ultrafeedback_binarized``, OpenRLHF's ``iter_dpo``
  output): ``prompt``, ``chosen``, ``rejected`` as strings or conversations (lists of
  ``{role, content}``; the answer is the last assistant message; without a ``prompt`` column the
  prompt is the conversation in ``chosen`` before its last assistant message), optional
  ``score_chosen`` / ``score_rejected`` (or OpenRLHF's ``chosen_reward`` / ``rejected_reward``).
- ``rlhflow`` (RLHFlow Online-RLHF generation and reward files): ``prompt`` + ``responses`` +
  ``rewards``, one number per response. Signature: ``responses`` with ``rewards`` (checked before
  ``generic``; a generation file without rewards reads as ``generic``, to the same effect).
- ``generic``: ``prompt`` + ``responses`` (list of strings) with optional ``models`` and
  ``scores`` lists of the same length, or ``prompt`` + ``response`` (one answer per row, optional
  ``model`` / ``score``).
- ``openrlhf`` (OpenRLHF ``batch_inference`` output): one answer per row, ``input`` (the prompt)
  + ``output`` (the answer), optional ``reward``. Signature: ``input`` + ``output`` and no
  ``instruction`` (Alpaca-style SFT rows have all three and are no candidate file).
- ``mapped``: any rows, through a field mapping (``data.fields``, `field_map`): which field holds
  the ``prompt``, the ``answers`` (a list per row) or the ``answer`` (one per row), and optionally
  the ``scores``, ``models``, ``id`` and ``reference``. Never detected: a mapping selects it.

The formats with a list of answers or one answer per row (``simpo``, ``rlhflow``, ``generic``,
``openrlhf``, ``mapped``) are each a `FieldMap` read by one reader, so they differ only in
field names. Where a format has scores, they become the candidate set's scores; whether the run
keeps them or has the judge rank the answers is ``data.keep_labels``.

A prompt is a string or a conversation (a list of ``{role, content}`` messages ending with the
turn to answer). A conversation of one user turn reads as its text; a longer one (a system prompt,
earlier turns) is kept whole in `Prompt.messages` with `schema.render_conversation` as its text.
Prompt ids come from ``id_field`` (or the mapping's ``id``) when given, else ``prompt_id``, else
``id`` (only for the formats with a list of answers per row, where ``id`` cannot be a per-row
id), else `stagealign.data.schema.prompt_id` of the prompt text (a conversation's rendering).
Prompts already formatted with a chat template (RLHFlow's, OpenRLHF's and SimPO's formatted
prompts) are read as the text they are; `Policy.format` passes them through unchanged.

A first row that matches no format (or lacks a field the requested format needs) raises
`LoaderError`. Content problems of single rows are counted by reason in a `SkipCounter` (the
first case of each reason logged with its location; ``strict=True`` raises instead):
``missing_prompt``, ``bad_prompt`` (not a string or conversation; a conversation with non-text
content or ending with an assistant turn), ``empty_prompt``, ``missing_answers`` (answer
field/list absent or not a list: row skipped), ``missing_field`` (``mapped``: a field the mapping
names is absent from the row: row skipped), ``bad_answer`` (non-string answer: that candidate
dropped), ``empty_answer`` (that candidate dropped; for a binarized row the whole pair),
``length_mismatch`` (models / scores list of another length: row skipped), ``bad_score``
(non-numeric / NaN score: kept as missing).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from stagealign.data.schema import Message, Prompt, prompt_id, render_conversation
from stagealign.data.sources import LoaderError

logger = logging.getLogger(__name__)

Format = Literal["auto", "ultrafeedback", "simpo", "binarized", "rlhflow", "generic", "openrlhf", "mapped"]
#: Every format, in detection order (``mapped`` is never detected).
FORMATS: tuple[str, ...] = ("ultrafeedback", "simpo", "binarized", "rlhflow", "generic", "openrlhf", "mapped")
#: What a ``data.fields`` mapping may name (see `field_map`).
FIELD_TARGETS: tuple[str, ...] = ("prompt", "answers", "answer", "scores", "models", "id", "reference")
#: Optional per-row column holding a reference answer for the prompt (win rate vs reference).
REFERENCE_FIELD = "reference"
UNKNOWN_SOURCE = "unknown"

#: Reasons that are recorded but never raised under ``strict=True``.
_NOTES = frozenset({"duplicate_answer", "not_in_prompts"})
_NEEDS = (
    "ultrafeedback needs instruction|prompt + completions; simpo needs prompt + "
    "all_generated_responses; binarized needs prompt + chosen + rejected (or conversational chosen "
    "+ rejected); rlhflow needs prompt + responses + rewards; generic needs prompt + responses, or "
    "prompt + response; openrlhf needs input + output; any other rows need data.fields"
)

Answer = tuple[str, str, "float | None", str]  # answer, source, score, field
#: (the prompt, its answers, the pair's field for a binarized row else None)
RowOut = tuple[Prompt, list[Answer], "str | None"]


@dataclass(frozen=True)
class FieldMap:
    """Which field of a row holds each part of a candidate set, for the formats that differ only
    in field names (one reader serves them all, so a tool's file is one more map, not more code).

    Exactly one of `answers` (a list of answers per row) and `answer` (one answer per row; rows of
    one prompt are merged) is set; `scores` and `models` hold a list alongside `answers` and one
    value alongside `answer`. `strict` (a user's mapping) makes every named field required in
    every row, since a field a user named and a row lacks is a mistake, not an absent option.
    """

    prompt: str
    answers: str | None = None
    answer: str | None = None
    scores: str | None = None
    models: str | None = None
    id: str | None = None
    reference: str = REFERENCE_FIELD
    strict: bool = False

    def named(self) -> dict[str, str]:
        """{target: field} of what this map names (`reference` only when a mapping named it)."""
        out = {t: getattr(self, t) for t in ("prompt", "answers", "answer", "scores", "models", "id")}
        if self.reference != REFERENCE_FIELD:
            out["reference"] = self.reference
        return {t: f for t, f in out.items() if f is not None}


#: The built-in formats that are field maps (``generic`` picks one of its two by the first row).
_MAPS: dict[str, FieldMap] = {
    "simpo": FieldMap(prompt="prompt", answers="all_generated_responses", scores="all_rm_scores"),
    "rlhflow": FieldMap(prompt="prompt", answers="responses", scores="rewards"),
    "generic": FieldMap(prompt="prompt", answers="responses", scores="scores", models="models"),
    "generic/response": FieldMap(prompt="prompt", answer="response", scores="score", models="model"),
    "openrlhf": FieldMap(prompt="input", answer="output", scores="reward"),
}


def field_map(fields: Mapping[str, Any]) -> FieldMap:
    """The `FieldMap` of a ``data.fields`` mapping ({target: field name in the rows}).

    Raises ValueError with one line naming the bad target: an unknown target (with the closest
    valid one), a name that is not a non-empty string, no ``prompt``, or not exactly one of
    ``answers`` / ``answer``.
    """
    for target, name in fields.items():
        if target not in FIELD_TARGETS:
            close = difflib.get_close_matches(str(target), FIELD_TARGETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"data.fields: unknown target {target!r} (targets: "
                             f"{', '.join(FIELD_TARGETS)}){hint}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"data.fields: {target!r} must name a field of the rows, got {name!r}")
    if "prompt" not in fields:
        raise ValueError("data.fields: needs 'prompt', the field that holds the prompt")
    if ("answers" in fields) == ("answer" in fields):
        raise ValueError("data.fields: needs exactly one of 'answers' (a list of answers per row) "
                         "or 'answer' (one answer per row)")
    return FieldMap(prompt=fields["prompt"], answers=fields.get("answers"), answer=fields.get("answer"),
                    scores=fields.get("scores"), models=fields.get("models"), id=fields.get("id"),
                    reference=fields.get("reference", REFERENCE_FIELD), strict=True)


def detect_format(row: dict[str, Any], prompt_field: str | None = None) -> str | None:
    """The format a row belongs to, or None when it matches none (see the module docstring).

    `prompt_field` replaces the prompt field of every format when the rows name it otherwise.
    """
    keys = set(row)

    def has_prompt(*defaults: str) -> bool:
        return (prompt_field in keys) if prompt_field else bool(keys.intersection(defaults))

    if "completions" in keys and has_prompt("instruction", "prompt"):
        return "ultrafeedback"
    if "all_generated_responses" in keys and has_prompt("prompt"):
        return "simpo"
    if {"chosen", "rejected"} <= keys and (has_prompt("prompt") or _is_conversation(row["chosen"])):
        return "binarized"
    if {"responses", "rewards"} <= keys and has_prompt("prompt"):
        return "rlhflow"
    if keys & {"responses", "response"} and has_prompt("prompt"):
        return "generic"
    if "output" in keys and has_prompt("input") and "instruction" not in keys:
        return "openrlhf"
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
    fields: FieldMap | None = None  # the field-map formats (simpo, rlhflow, generic, openrlhf, mapped)
    score_field: str | None = None  # ultrafeedback

    @property
    def reference_field(self) -> str:
        return self.fields.reference if self.fields is not None else REFERENCE_FIELD

    @classmethod
    def for_first_row(
        cls, row: dict[str, Any], loc: str, fmt: str, *, prompt_field: str | None,
        id_field: str | None, score_field: str | None, fields: FieldMap | None = None,
    ) -> "RowReader":
        """The reader for a file whose first row is `row`; `fields` (a mapping) means ``mapped``.

        Raises `LoaderError` naming `loc` and the field when the row cannot be read as `fmt`.
        """
        found = ", ".join(sorted(map(str, row))) or "none"
        if fields is not None:
            fmt = "mapped"
        elif fmt == "mapped":
            raise LoaderError(f"{loc}: format 'mapped' needs data.fields (which field holds what)")
        elif fmt == "auto":
            detected = detect_format(row, prompt_field)
            if detected is None:
                hint = f" (prompt_field={prompt_field!r})" if prompt_field else ""
                raise LoaderError(
                    f"{loc}: cannot detect the pool format{hint}: found fields [{found}]; {_NEEDS}"
                )
            fmt = detected

        def need(name: str, target: str | None = None) -> None:
            if name not in row:
                via = f" (data.fields.{target})" if target else ""
                raise LoaderError(
                    f"{loc}: format {fmt!r} needs field {name!r}{via}; found fields [{found}]"
                )

        if fmt == "ultrafeedback":
            pf = prompt_field or ("instruction" if "instruction" in row else "prompt")
            need(pf)
            need("completions")
            detected_score = _ultrafeedback_score_field(row, loc)  # also checks the completion's fields
            score_field = score_field if score_field is not None else detected_score
            ids = (id_field,) if id_field else ("prompt_id", "id")
            return cls(format=fmt, prompt_field=pf, id_fields=ids, score_field=score_field)
        if fmt == "binarized":
            pf = prompt_field or "prompt"
            need("chosen")
            need("rejected")
            if pf not in row and not _is_conversation(row["chosen"]):
                need(pf)
            return cls(format=fmt, prompt_field=pf, id_fields=(id_field,) if id_field else ("prompt_id",))
        if fmt == "mapped":
            assert fields is not None
            for target, name in fields.named().items():
                need(name, target)
            fm = fields
        else:
            if fmt == "generic" and "responses" not in row and "response" in row:
                fm = _MAPS["generic/response"]
            else:
                fm = _MAPS[fmt]
            if prompt_field:
                fm = replace(fm, prompt=prompt_field)
            need(fm.prompt)
            need(fm.answers or fm.answer or "")
        if id_field or fm.id:
            ids: tuple[str, ...] = (id_field or fm.id,)  # type: ignore[assignment]
        elif fm.strict:
            ids = ()  # a mapping without `id`: ids from the prompt text
        else:
            ids = ("prompt_id", "id") if fm.answers else ("prompt_id",)
        return cls(format=fmt, prompt_field=fm.prompt, id_fields=ids, fields=fm)

    # -- the prompt ---------------------------------------------------------------------------

    def prompt(self, row: dict[str, Any], loc: str, ctx: SkipCounter | None) -> Prompt | None:
        """The row's prompt, or None when the row is skipped (ctx None: count nothing)."""
        try:
            return self._prompt(row, loc, ctx or _Quiet())
        except _Skip:
            return None

    def _prompt(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> Prompt:
        pf = self.prompt_field
        value = row.get(pf)
        if value is None and self.format == "binarized" and _is_conversation(row.get("chosen")):
            value = _prompt_turns(row["chosen"])
            pf = "chosen"
        if value is None:
            _fail(ctx, loc, "missing_prompt", pf, "missing")
        messages: tuple[Message, ...] | None = None
        if isinstance(value, str):
            text = value
        elif _is_conversation(value):
            text, messages = _conversation(value, loc, pf, ctx)
        else:
            _fail(ctx, loc, "bad_prompt", pf, f"expected a string or a conversation, got {type(value).__name__}")
        if not text.strip():
            _fail(ctx, loc, "empty_prompt", pf, "empty prompt")
        pid = None
        for name in self.id_fields:
            v = row.get(name)
            if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
                pid = str(v).strip()
                break
        return Prompt(id=pid or prompt_id(text), text=text, messages=messages)

    # -- the answers --------------------------------------------------------------------------

    def read(self, row: dict[str, Any], loc: str, ctx: SkipCounter) -> RowOut | None:
        """The row's prompt and answers, or None when the row is skipped (counted in `ctx`)."""
        try:
            prompt = self._prompt(row, loc, ctx)
            if self.format == "ultrafeedback":
                return prompt, self._ultrafeedback(row, loc, ctx), None
            if self.format == "binarized":
                return prompt, self._binarized(row, loc, ctx), "chosen/rejected"
            fm = self.fields
            assert fm is not None
            if fm.strict:
                _require_named(fm, row, loc, ctx)
            if fm.answers is not None:
                return prompt, _answer_list_row(fm, row, loc, ctx), None
            return prompt, _one_answer_row(fm, row, loc, ctx), None
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
            sf = f"score_{name}" if f"score_{name}" in row else f"{name}_reward"  # TRL's, OpenRLHF's
            score = _checked_score(row.get(sf), loc, sf, ctx)
            out.append((answer, _source(row.get(f"{name}_model")), score, name))
        return out


def _ultrafeedback_score_field(row: dict[str, Any], loc: str) -> str | None:
    """The per-completion score key of raw UltraFeedback, from the first row's first completion."""
    comps = row["completions"]
    if not (isinstance(comps, list) and comps and isinstance(comps[0], dict)):
        return None
    if "response" not in comps[0]:
        inner = ", ".join(sorted(map(str, comps[0])))
        raise LoaderError(f"{loc}: format 'ultrafeedback' needs field 'completions[0].response'; "
                          f"found fields [{inner}]")
    return next((k for k in ("overall_score", "fine-grained_score") if k in comps[0]), None)


def _require_named(fm: FieldMap, row: dict[str, Any], loc: str, ctx: SkipCounter) -> None:
    """A mapping's optional fields (scores, models, id, reference) must be in every row too."""
    for target, name in fm.named().items():
        if target not in ("prompt", "answers", "answer") and name not in row:
            _fail(ctx, loc, "missing_field", name, f"missing (data.fields.{target})")


def _answer_list_row(fm: FieldMap, row: dict[str, Any], loc: str, ctx: SkipCounter) -> list[Answer]:
    """A row with a list of answers, and optional lists of scores and models of the same length."""
    assert fm.answers is not None
    answers = _answer_list(row, fm.answers, loc, ctx)
    extra: dict[str, list[Any]] = {}
    for name in (fm.models, fm.scores):
        value = row.get(name) if name is not None else None
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != len(answers):
            got = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
            _fail(ctx, loc, "length_mismatch", name,
                  f"expected a list of {len(answers)} items (one per answer), got {got}")
        extra[name] = value
    out: list[Answer] = []
    for i, value in enumerate(answers):
        answer = _checked_answer(value, loc, f"{fm.answers}[{i}]", ctx)
        if answer is None:
            continue
        model = extra[fm.models][i] if fm.models in extra else None
        score = _checked_score(extra[fm.scores][i] if fm.scores in extra else None, loc,
                               f"{fm.scores}[{i}]", ctx)
        out.append((answer, _source(model), score, f"{fm.answers}[{i}]"))
    return out


def _one_answer_row(fm: FieldMap, row: dict[str, Any], loc: str, ctx: SkipCounter) -> list[Answer]:
    """A row with one answer (and its optional score and model); rows of a prompt are merged later."""
    assert fm.answer is not None
    if row.get(fm.answer) is None:
        _fail(ctx, loc, "missing_answers", fm.answer, "missing")
    answer = _checked_answer(row[fm.answer], loc, fm.answer, ctx)
    if answer is None:
        raise _Skip
    score = _checked_score(row.get(fm.scores) if fm.scores else None, loc, str(fm.scores), ctx)
    return [(answer, _source(row.get(fm.models) if fm.models else None), score, fm.answer)]


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


def _conversation(value: list[dict[str, Any]], loc: str, pf: str,
                  ctx: SkipCounter) -> tuple[str, tuple[Message, ...] | None]:
    """(text, messages) of a conversational prompt: every turn kept as ``{role, content}`` text.

    A single user turn is just its text (messages None), so it reads and is identified exactly
    like a string prompt; a prompt must end with the turn to answer, not with an answer.
    """
    messages: list[Message] = []
    for i, m in enumerate(value):
        content, role = _content_text(m["content"]), m["role"]
        if content is None or not isinstance(role, str) or not role.strip():
            what = "content is not text" if content is None else f"role {role!r} is not a name"
            _fail(ctx, loc, "bad_prompt", f"{pf}[{i}]", f"conversation turn: {what}")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] == "assistant":
        _fail(ctx, loc, "bad_prompt", pf, "conversation ends with an assistant turn (a prompt ends "
              "with the turn to answer)")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        _fail(ctx, loc, "empty_prompt", pf, "conversation has no non-empty user turn")
    if len(messages) == 1:
        return messages[0]["content"], None
    return render_conversation(messages), tuple(messages)


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


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
    "FIELD_TARGETS",
    "FORMATS",
    "REFERENCE_FIELD",
    "UNKNOWN_SOURCE",
    "Answer",
    "FieldMap",
    "Format",
    "RowOut",
    "RowReader",
    "SkipCounter",
    "detect_format",
    "field_map",
]

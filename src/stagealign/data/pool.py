"""Static preference pools: rows from any source and format become one `Pool` of candidate sets.

This is the assembly layer: `stagealign.data.sources` says where rows come from and
`stagealign.data.formats` turns one row into a prompt and its answers; here rows are merged by
prompt, cleaned, and turned into `CandidateSet`s, so the merging rules live in one place whatever
the input looked like.

Rows that share a prompt id are merged into one candidate set (one-answer-per-row files such as
OpenRLHF's become one set per prompt); for binarized data `Pool.labels` records the (chosen,
rejected) candidate indices of the first pair per prompt and `Pool.label_pairs` keeps all of them;
formats with scores (UltraFeedback's ratings, SimPO's and RLHFlow's reward-model scores) keep
them as the sets' scores instead. Any format may carry a reference answer per prompt in a
``reference`` column (a string; the first one seen for a prompt is kept); evaluation reports the
win rate against it next to the win rate against the initial policy.

Bad-input policy (long runs must neither die late nor train on silently mangled data):
structural problems raise `LoaderError` (a ``ValueError``) at once, naming file, row and field
(an input without rows or with no usable prompt left, plus those of the sources and formats);
content problems are skipped and counted in ``Pool.skipped`` by reason (``strict=True`` raises
instead). Besides the row-level reasons of `stagealign.data.formats`, merging counts
``chosen_equals_rejected`` (pair not labelled), ``id_conflict`` (one id, two prompt texts: row
skipped), ``too_few_candidates`` (prompt with fewer than ``min_candidates`` distinct answers
after cleaning: prompt dropped), ``partial_scores`` (only some candidates of a prompt have
scores: the prompt's scores are dropped) and ``bad_reference`` (a ``reference`` that is not a
non-empty string: ignored, the row kept); `load_onpolicy_candidates` also counts
``not_in_prompts`` (a row of a prompt the run did not give: left out, never raised). Duplicate
answers for one prompt (compared after stripping whitespace) are deduplicated, the first kept;
duplicates inside one row (or across rows of one-answer-per-row data) are counted as
``duplicate_answer``, never raised, and repeats of an answer across binarized rows (the normal
case for multi-pair data) are merged silently.

`load_onpolicy_candidates` reads a file of on-policy candidates generated outside the run (in
any format `load_pool` reads) into candidate sets of one iteration, origin "onpolicy", tied to the
run's prompts.

`save_pool` / `read_pool` store a cleaned pool as an artifact: a JSONL file of `CandidateSet`
rows (readable with ``CandidateSet.from_row`` by any stage) plus a ``<name>.meta.json`` sidecar
with the source, format, skip counts, labels and what belongs to the prompts (reference answers,
conversations).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagealign.artifacts import ArtifactError, iter_jsonl, read_json, write_json, write_jsonl
from stagealign.data.formats import (
    FORMATS,
    FieldMap,
    Format,
    RowReader,
    SkipCounter,
    detect_format,
    field_map,
)
from stagealign.data.schema import CandidateSet, Origin, Prompt
from stagealign.data.sources import LoaderError, iter_sources

logger = logging.getLogger(__name__)


@dataclass
class Pool:
    """Prompts and one `CandidateSet` per prompt: a static preference pool (origin "static"), or
    on-policy candidates read from a file (`load_onpolicy_candidates`, origin "onpolicy")."""

    prompts: list[Prompt]
    sets: dict[str, CandidateSet]  # keyed by prompt id, same order as `prompts`
    labels: dict[str, tuple[int, int]] | None = None  # binarized: (chosen, rejected) indices
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    source: str = ""
    format: str = ""  # the format the rows were read as
    label_pairs: dict[str, list[tuple[int, int]]] | None = None  # binarized: every labelled pair

    def __len__(self) -> int:
        return len(self.sets)


def load_pool(
    source: str | os.PathLike,
    format: Format = "auto",
    split: str = "train",
    limit: int | None = None,
    prompt_field: str | None = None,
    *,
    id_field: str | None = None,
    score_field: str | None = None,
    fields: Mapping[str, str] | None = None,
    strict: bool = False,
    min_candidates: int = 2,
) -> Pool:
    """Load a static preference pool (see the module docstrings for formats and bad-input policy).

    `limit` keeps the first `limit` usable prompts (in order of first appearance); reading stops
    as soon as they are collected, so rows of those prompts further down are not merged.
    `prompt_field` names the prompt column when it is not the format's default; `score_field`
    names the per-completion score key for raw UltraFeedback. `fields` (``data.fields``: {target:
    field}, see `formats.field_map`) reads any rows, as format ``mapped``.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
    reading = _Reading.start(source, format, fields, prompt_field, id_field, strict, min_candidates)
    reading.read(split, limit, prompt_field=prompt_field, id_field=id_field, score_field=score_field)
    return reading.assemble(limit)


def load_onpolicy_candidates(
    source: str | os.PathLike,
    iteration: int,
    *,
    format: Format = "auto",
    split: str = "train",
    fields: Mapping[str, str] | None = None,
    prompts: Iterable[Prompt] | None = None,
    render: Callable[[Prompt], str] | None = None,
    keep_scores: bool = True,
    strict: bool = False,
    min_candidates: int = 2,
) -> Pool:
    """On-policy candidates of iteration `iteration` generated outside the run (say on one's own
    vLLM cluster), from a file in any format `load_pool` reads, as the run's own samples would be.

    Every set has origin "onpolicy", iteration `iteration` and every source
    ``policy@{iteration - 1}`` (the policy the iteration starts from wrote them; model names in the
    file are not kept). Scores in the file become the sets' scores (``keep_scores=False`` drops
    them); a set without scores is left for the judge, like a sampled one.

    `prompts` (the run's prompts, e.g. the iteration's training prompts) ties the file to the run:
    a row's prompt is matched by id, else by its text, else, with `render` (e.g. ``policy.format``),
    by the text the policy is conditioned on, which is how files that store the formatted prompt
    (RLHFlow's, OpenRLHF's) are matched; a matched set takes the run prompt's id, text and
    conversation. Rows of other prompts are left out and counted as ``not_in_prompts`` (never
    raised: one file may hold every iteration's prompts). Without `prompts`, sets keep the file's
    own prompts.
    """
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 1:
        raise ValueError(f"iteration must be a positive integer (on-policy data trains iteration 1 on); "
                         f"got {iteration!r}")
    reading = _Reading.start(source, format, fields, None, None, strict, min_candidates,
                             resolve=_resolver(prompts, render))
    reading.read(split, None, prompt_field=None, id_field=None, score_field=None)
    return reading.assemble(None, origin="onpolicy", iteration=iteration,
                            writer=f"policy@{iteration - 1}", keep_scores=keep_scores)


def _resolver(prompts: Iterable[Prompt] | None,
              render: Callable[[Prompt], str] | None) -> Callable[[Prompt], Prompt | None] | None:
    """Maps a file's prompt to the run's prompt it stands for (by id, text, then rendered text)."""
    if prompts is None:
        return None
    known = list(prompts)
    by_id = {p.id: p for p in known}
    by_text = {p.text.strip(): p for p in known}
    by_render: dict[str, Prompt] = {}

    def resolve(p: Prompt) -> Prompt | None:
        hit = by_id.get(p.id) or by_text.get(p.text.strip())
        if hit is None and render is not None:
            if not by_render:  # formatted once, and only when a file needs it
                by_render.update({render(q).strip(): q for q in known})
            hit = by_render.get(p.text.strip())
        return hit

    return resolve


def save_pool(pool: Pool, path: str | os.PathLike) -> None:
    """Write `pool` as JSONL of CandidateSet rows plus a ``<name>.meta.json`` sidecar."""
    path = Path(path)
    meta = {
        "source": pool.source,
        "format": pool.format,
        "skipped": pool.skipped,
        "n_prompts": len(pool.sets),
        "references": {p.id: p.reference for p in pool.prompts if p.reference is not None},
        "messages": {p.id: list(p.messages) for p in pool.prompts if p.messages is not None},
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
    convs = meta.get("messages") or {}
    prompts = [Prompt(id=pid, text=cs.prompt, reference=refs.get(pid),
                      messages=tuple(convs[pid]) if pid in convs else None) for pid, cs in sets.items()]
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
# reading the files of a source


class _Reading:
    """One load: checks the arguments, reads every file of a source into `_Merge`, assembles.

    Shared by `load_pool` and `load_onpolicy_candidates`, so a pool and a candidates file are
    read, cleaned and merged by the same rules.
    """

    def __init__(self, source: str, format: str, fields: FieldMap | None, merge: "_Merge") -> None:
        self.source, self.format, self.fields, self.merge = source, format, fields, merge
        self.fmt_seen: str | None = None

    @classmethod
    def start(
        cls, source: str | os.PathLike, format: str, fields: Mapping[str, str] | None,
        prompt_field: str | None, id_field: str | None, strict: bool, min_candidates: int,
        resolve: Callable[[Prompt], Prompt | None] | None = None,
    ) -> "_Reading":
        """Check the arguments (ValueError with one line) before any file is opened."""
        if format not in ("auto", *FORMATS):
            raise ValueError(f"format must be one of auto, {', '.join(FORMATS)}; got {format!r}")
        fm = field_map(fields) if fields is not None else None
        if fm is not None and format not in ("auto", "mapped"):
            raise ValueError(f"a field mapping (data.fields) reads rows as format 'mapped'; got format {format!r}")
        if fm is None and format == "mapped":
            raise ValueError("format 'mapped' needs a field mapping (data.fields: which field holds what)")
        if fm is not None and (prompt_field or id_field):
            raise ValueError("with a field mapping (data.fields) name the prompt and id fields there, "
                             "not as prompt_field / id_field")
        if min_candidates < 2:
            raise ValueError(f"min_candidates must be at least 2; got {min_candidates}")
        ctx = SkipCounter(strict)
        return cls(os.fspath(source), format, fm, _Merge(ctx, id_field, min_candidates, resolve))

    def read(self, split: str, limit: int | None, *, prompt_field: str | None, id_field: str | None,
             score_field: str | None) -> None:
        """Merge every row (up to `limit` usable prompts); a source without rows is an error."""
        any_rows = False
        for _label, rows in iter_sources(self.source, split):
            reader: RowReader | None = None
            for loc, row in rows:
                any_rows = True
                if reader is None:
                    reader = self._reader(row, loc, prompt_field, id_field, score_field)
                if limit is not None and self.merge.n_ready >= limit:
                    head = reader.prompt(row, loc, None)  # quiet: nothing is counted past the limit
                    if head is None or head.id not in self.merge.groups:
                        return
                self.merge.add(reader, row, loc)
        if not any_rows:
            raise LoaderError(f"{self.source}: no rows")

    def _reader(self, row: dict[str, Any], loc: str, prompt_field: str | None, id_field: str | None,
                score_field: str | None) -> RowReader:
        """The reader of one file, from its first row; every file of a source has one format."""
        reader = RowReader.for_first_row(row, loc, self.format, prompt_field=prompt_field,
                                         id_field=id_field, score_field=score_field, fields=self.fields)
        if self.fmt_seen is not None and reader.format != self.fmt_seen:
            raise LoaderError(f"{loc}: rows are in {reader.format!r} format but earlier files were "
                              f"{self.fmt_seen!r}; load them separately")
        self.fmt_seen = reader.format
        return reader

    def assemble(self, limit: int | None, *, origin: Origin = "static", iteration: int = 0,
                 writer: str | None = None, keep_scores: bool = True) -> Pool:
        """The `Pool` of what was read; `writer` replaces every source (on-policy candidates)."""
        return _assemble(self.merge, self.source, self.fmt_seen, limit, origin=origin,
                         iteration=iteration, writer=writer, keep_scores=keep_scores)


# --------------------------------------------------------------------------------------------
# merging rows by prompt


@dataclass
class _Group:
    """Everything gathered for one prompt so far, answers deduplicated after stripping."""

    prompt: Prompt
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


class _Merge:
    """Merges read rows into `_Group`s by prompt id, in order of first appearance.

    `resolve` (on-policy candidates) maps each row's prompt to the run's prompt it stands for, or
    None for a prompt the run does not have.
    """

    def __init__(self, ctx: SkipCounter, id_field: str | None, min_candidates: int,
                 resolve: Callable[[Prompt], Prompt | None] | None = None) -> None:
        self.ctx = ctx
        self.id_field = id_field
        self.min_candidates = min_candidates
        self.resolve = resolve
        self.groups: dict[str, _Group] = {}
        self.n_ready = 0  # prompts with enough distinct answers so far

    def add(self, reader: RowReader, row: dict[str, Any], loc: str) -> None:
        ctx = self.ctx
        out = reader.read(row, loc, ctx)
        if out is None:
            return
        prompt, answers, pair_field = out
        if self.resolve is not None:
            run_prompt = self.resolve(prompt)
            if run_prompt is None:
                ctx.problem(loc, "not_in_prompts", reader.prompt_field,
                            f"prompt {prompt.id!r} is not one of the given prompts; row left out")
                return
            prompt = run_prompt
        group = self.groups.get(prompt.id)
        if group is None:
            group = self.groups[prompt.id] = _Group(prompt, loc)
        elif group.prompt.text != prompt.text:
            ctx.problem(loc, "id_conflict", self.id_field or "id",
                        f"id {prompt.id!r} already used for another prompt text (at {group.loc})")
            return
        rf = reader.reference_field
        if group.reference is None and row.get(rf) is not None:
            ref = row[rf]
            if isinstance(ref, str) and ref.strip():
                group.reference = ref
            else:
                ctx.problem(loc, "bad_reference", rf, "reference is not a non-empty string; ignored")
        was_ready = len(group.candidates) >= self.min_candidates
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
        if not was_ready and len(group.candidates) >= self.min_candidates:
            self.n_ready += 1


def _assemble(
    merge: _Merge, source: str, fmt: str | None, limit: int | None, *, origin: Origin,
    iteration: int, writer: str | None, keep_scores: bool,
) -> Pool:
    """The `Pool` of the usable groups (at most `limit`), with the final skip counts."""
    ctx, groups, min_candidates = merge.ctx, merge.groups, merge.min_candidates
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
        p = group.prompt
        prompts.append(Prompt(id=pid, text=p.text, messages=p.messages,
                              reference=group.reference if group.reference is not None else p.reference))
        sets[pid] = CandidateSet(
            prompt_id=pid, prompt=p.text, candidates=group.candidates,
            sources=[writer] * len(group.candidates) if writer else group.sources,
            origin=origin, iteration=iteration, scores=scores if keep_scores else None,
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
    binarized = fmt == "binarized"
    return Pool(
        prompts=prompts, sets=sets, labels=labels if binarized else None, skipped=skipped,
        source=source, format=fmt or "", label_pairs=label_pairs if binarized else None,
    )


def _meta_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.meta.json")


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "nothing"


__all__ = [
    "FORMATS",
    "LoaderError",
    "Pool",
    "detect_format",
    "load_onpolicy_candidates",
    "load_pool",
    "read_pool",
    "save_pool",
]

"""Records that flow between stages: prompts, candidate sets and preference pairs.

Every record keeps its provenance (where its answers came from and in which iteration) so a
pairs file can be audited, mixed with others, or fed to another trainer without losing what
made it. Pairs use TRL's preference columns (`prompt`, `chosen`, `rejected`) so any TRL
trainer reads them directly; the extra columns are ignored there.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Origin = Literal["static", "onpolicy"]
ORIGINS: tuple[str, ...] = ("static", "onpolicy")


@dataclass(frozen=True)
class Prompt:
    """One prompt; `id` is stable across stages so artifacts can be joined."""

    id: str
    text: str
    reference: str | None = None  # an optional reference answer (for win rate vs reference)


def prompt_id(text: str) -> str:
    """The id of a prompt that comes without one: 16 hex chars of the sha256 of the stripped text.

    One rule for every source of prompts, so the same text gets the same id whether it came from
    a pool file or a synthetic world, and artifacts of different runs join on it.
    """
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


@dataclass
class CandidateSet:
    """All candidate answers for one prompt from one origin, with optional judge scores.

    `sources` names who wrote each candidate (a pool model's name, or "policy@k" for
    on-policy samples of iteration k), which the diversity diagnostics and the
    controlled-pool experiments need.
    """

    prompt_id: str
    prompt: str
    candidates: list[str]
    sources: list[str]
    origin: Origin
    iteration: int = 0
    scores: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.candidates) != len(self.sources):
            raise ValueError(
                f"prompt {self.prompt_id!r}: {len(self.candidates)} candidates but "
                f"{len(self.sources)} sources"
            )
        if self.scores is not None and len(self.scores) != len(self.candidates):
            raise ValueError(
                f"prompt {self.prompt_id!r}: {len(self.scores)} scores for "
                f"{len(self.candidates)} candidates"
            )

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "CandidateSet":
        return cls(**row)


@dataclass
class PreferencePair:
    """A (prompt, chosen, rejected) triple in TRL's format plus provenance."""

    prompt: str
    chosen: str
    rejected: str
    prompt_id: str
    score_chosen: float
    score_rejected: float
    origin: Origin
    iteration: int
    chosen_source: str = ""
    rejected_source: str = ""
    margin: float = field(init=False)

    def __post_init__(self) -> None:
        self.margin = float(self.score_chosen - self.score_rejected)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "PreferencePair":
        row = dict(row)
        row.pop("margin", None)
        return cls(**row)

"""Records that flow between stages: prompts, candidate sets and preference pairs.

Every record keeps its provenance (where its answers came from and in which iteration) so a
pairs file can be audited, mixed with others, or fed to another trainer without losing what
made it. Pairs use TRL's preference columns (`prompt`, `chosen`, `rejected`) so any TRL
trainer reads them directly; the extra columns are ignored there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: where a set's candidates came from: the static pool, the policy's samples, or both in one set
#: (``union``: the pool's answers and the policy's samples for the same prompt, ranked together)
Origin = Literal["static", "onpolicy", "union"]
#: the pure origins, which every pair diagnostic reports a share for (``union`` shows up when present)
ORIGINS: tuple[str, ...] = ("static", "onpolicy")


#: One chat message, as chat templates take it: ``{"role": ..., "content": ...}`` (content is text).
Message = dict[str, str]


@dataclass(frozen=True)
class Prompt:
    """One prompt; `id` is stable across stages so artifacts can be joined.

    A chat prompt that is more than one user turn (a system prompt, earlier turns) keeps its
    conversation in `messages`, ending with the turn to answer, so the policy can format it with
    its chat template (`Policy.format`); `text` is then its readable rendering
    (`render_conversation`), which judges and logs see and the id is derived from. A plain prompt,
    or a conversation of a single user turn, has `messages` None and `text` is the prompt itself.
    `messages` takes no part in the hash (dicts cannot be hashed; `text` already tells two
    conversations apart).
    """

    id: str
    text: str
    reference: str | None = None  # an optional reference answer (for win rate vs reference)
    messages: tuple[Message, ...] | None = field(default=None, hash=False)


def prompt_id(text: str) -> str:
    """The id of a prompt that comes without one: 16 hex chars of the sha256 of the stripped text.

    One rule for every source of prompts, so the same text gets the same id whether it came from
    a pool file or a synthetic world, and artifacts of different runs join on it. A conversation's
    id is that of its rendering (`render_conversation`), so a single user turn gets the id of its
    text and a conversation the same id in every run.
    """
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def render_conversation(messages: Sequence[Message]) -> str:
    """A conversation as plain text: each turn ``Role: content``, turns separated by a blank line.

    The one rendering of a conversation, used where no chat template applies: the prompt text
    judges and logs see, the id (`prompt_id` of this text), and what a policy without a chat template
    is conditioned on (inside its plain template). A single user turn renders as its content
    alone, so it reads, and is identified, exactly like the same prompt given as a string.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass
class CandidateSet:
    """All candidate answers for one prompt from one origin, with optional judge scores.

    `sources` names who wrote each candidate (a pool model's name, or "policy@k" for
    on-policy samples of iteration k), which the diversity diagnostics and the
    controlled-pool experiments need; a ``union`` set holds both kinds, told apart by their sources.
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

"""Which data source the next DPO iteration trains on.

The paper's finding is that neither source always wins: static multi-model pools help while the
policy is in the *preference injection* stage (it needs coverage), on-policy samples help in the
*preference fine-tuning* stage (it needs in-distribution quality). A schedule turns that into a
per-iteration choice. Kinds:

* ``static`` / ``onpolicy``: fixed baselines, whatever the boundary score says.
* ``path``: an explicit sequence such as ``off,on``, for the 2^k path grid of the experiments.
* ``auto``: follow a decision *rule* (``schedule.rule``, see :data:`RULES`) on the measurement of
  the current policy; when the rule's answer is "uncertain" keep the previous source, because
  flipping on noise costs more than it can gain.
* ``blend``: a share of on-policy pairs that ramps linearly with the boundary score (see
  :func:`blend_share`), the reviewers' "can mixing balance diversity and quality?" question.
* ``union`` / ``route``: data sources that need no decision. ``union`` pairs each prompt's best and
  worst answer over the static candidates *and* the policy's samples; ``route`` picks, prompt by
  prompt, the on-policy candidates when the policy's samples beat the static answers there (mean
  vote >= 1/2) and the static candidates otherwise.

Rules (``auto``'s ``schedule.rule``), all read from the same boundary probe except ``race``:

* ``bs``: the paper's rule, BS >= threshold -> on-policy, with the probe's votes (``boundary.votes``).
* ``bs-hard``: the same with hard votes (0 / 1/2 / 1) whatever ``boundary.votes`` says. Soft BS moves
  with the judge's temperature; hard BS does not.
* ``bs-pool``: BS against a threshold set by the pool itself: the mean win rate of each probe prompt's
  best static answer against the other static answers (what static pairs teach towards), instead of
  0.5 (which is "beats the pool's average writer" and moves whenever the pool changes).
* ``coverage``: static when the pool holds preferred answers the policy cannot sample: the share of
  probe prompts whose static answer that beats the policy's samples most contains a token the
  policy gives probability < ``boundary.coverage_eps`` is at least ``boundary.coverage_share``.
* ``race``: race-and-keep. Train a short copy on each source from the same checkpoint, compare the
  two head to head on probe prompts with sequential stopping, keep the winner's source (the
  pipeline runs it; see ``stagealign.race``).

Pure functions with no I/O, so the pipeline, the CLI and the tests can all call them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Choice", "Source", "KINDS", "ADAPTIVE", "PURE", "SHORT", "MIXED", "RULES", "DEFAULT_RULE",
           "is_adaptive", "races", "settings_read", "parse_path", "short", "path_text", "blend_share", "rule_decision", "choose",
           "next_choice"]

Source = Literal["static", "onpolicy", "blend", "union", "route"]
Kind = Literal["static", "onpolicy", "path", "auto", "blend", "union", "route"]
KINDS: tuple[str, ...] = ("static", "onpolicy", "path", "auto", "blend", "union", "route")
#: kinds whose choice depends on the measured boundary score (they need boundary.enabled)
ADAPTIVE: tuple[str, ...] = ("auto", "blend")
#: sources that mix static and on-policy candidates per prompt (every prompt is sampled)
MIXED: tuple[str, ...] = ("union", "route")
#: auto's decision rules (module docstring); the measurement each reads is recorded by the probe
RULES: tuple[str, ...] = ("bs", "bs-hard", "bs-pool", "coverage", "race")
#: the rule `auto` follows unless `schedule.rule` says otherwise: race, the only rule that measures
#: what it decides (the better next source) instead of predicting it from how answers compare; on
#: the coverage world it agreed with the better source at 92% of the significant checkpoints, the
#: BS rules at 11% (README, "Which rule `auto` follows"; bench/science.py)
DEFAULT_RULE = "race"
_DECISIONS = ("injection", "fine-tuning", "uncertain")

_TOKENS = {
    "off": "static",
    "static": "static",
    "off-policy": "static",
    "offpolicy": "static",
    "on": "onpolicy",
    "onpolicy": "onpolicy",
    "on-policy": "onpolicy",
}


@dataclass(frozen=True)
class Choice:
    """The data source for one iteration, with the reason recorded next to the run's artifacts.

    ``onpolicy_share`` is the fraction of the iteration's prompts whose candidates include the
    policy's samples: exactly 0 for ``static``, exactly 1 for ``onpolicy``, ``union`` and ``route``
    (every prompt is sampled; which pairs ``route`` ends with is in the build stage's counts),
    strictly between for ``blend`` (checked, so a Choice read back from disk cannot contradict itself).
    """

    source: Source
    onpolicy_share: float
    reason: str = ""

    def __post_init__(self) -> None:
        if self.source not in ("static", "onpolicy", "blend", *MIXED):
            raise ValueError(f"unknown source {self.source!r}; expected static, onpolicy, blend, union or route")
        share = float(self.onpolicy_share)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"onpolicy_share must be in [0, 1], got {share}")
        expected = {"static": 0.0, "onpolicy": 1.0, "union": 1.0, "route": 1.0}.get(self.source)
        if expected is not None and share != expected:
            raise ValueError(f"source {self.source!r} needs onpolicy_share={expected}, got {share}")
        if self.source == "blend" and share in (0.0, 1.0):
            raise ValueError("a blend needs 0 < onpolicy_share < 1; use static/onpolicy instead")


#: the short names paths are written with (``off,on``; grid cells ``path-off-on``)
SHORT = {"static": "off", "onpolicy": "on"}
#: the pure sources (a path is a sequence of them; a blend is neither)
PURE: tuple[str, ...] = tuple(SHORT)


def is_adaptive(kind: str) -> bool:
    return kind in ADAPTIVE


def races(kind: str, rule: str) -> bool:
    """Whether a schedule decides by racing (auto with rule race): it trains before it decides,
    reads no probe, and no finished cell's measurement predicts it."""
    return kind == "auto" and rule == "race"


def settings_read(kind: str, rule: str) -> tuple[str, ...]:
    """The `schedule:` fields besides `kind` that a run of `kind` (and `rule`) reads. A resumed run
    compares only these (`pipeline._config_data`), so a fixed path resumes after auto's default
    rule or the race's budget changed; keep this in step with `next_choice` and the pipeline."""
    if kind == "path":
        return ("path",)
    if kind == "auto":
        return ("rule", "first") + (("race_share", "race_budget") if races(kind, rule) else ())
    if kind == "blend":
        return ("first", "blend_width")
    return ()


def rule_decision(rule: str, measure: dict, threshold: float) -> tuple[str, str]:
    """(decision, evidence) of a probe-based rule from a recorded `measure` result: the decision is
    injection (static next), fine-tuning (on-policy next) or uncertain. ``race`` is not probe-based
    (the pipeline runs it); the measurement must hold what the rule reads (it names what is missing)."""
    if rule not in RULES or rule == "race":
        raise ValueError(f"unknown probe rule {rule!r}; expected one of {', '.join(r for r in RULES if r != 'race')}")
    need = {"bs": ("decision", "bs"), "bs-hard": ("bs_hard", "bs_hard_lo", "bs_hard_hi"),
            "bs-pool": ("bs", "lo", "hi", "pool_threshold"), "coverage": ("uncovered", "coverage_share")}[rule]
    missing = [k for k in need if measure.get(k) is None]
    if missing:
        raise ValueError(f"rule {rule!r} needs {', '.join(missing)} in the boundary measurement, which does not "
                         "hold it: recorded by an older stagealign (delete the run's measure stages to measure "
                         "again), or nothing to compute it from (pool_threshold needs probe prompts with at least "
                         "2 static answers)")
    if rule == "bs":
        return measure["decision"], f"BS={measure['bs']:.3f} vs {threshold}"
    if rule == "bs-hard":
        lo, hi, t = measure["bs_hard_lo"], measure["bs_hard_hi"], threshold
        ev = f"hard BS={measure['bs_hard']:.3f} [{lo:.3f}, {hi:.3f}] vs {t}"
    elif rule == "bs-pool":
        lo, hi, t = measure["lo"], measure["hi"], measure["pool_threshold"]
        ev = f"BS={measure['bs']:.3f} [{lo:.3f}, {hi:.3f}] vs the pool's best answer {t:.3f}"
    else:  # coverage: one-sided by design, a share of prompts against a share (no interval)
        u, t = measure["uncovered"], measure["coverage_share"]
        ev = f"{u:.0%} of probe prompts prefer a static answer the policy cannot sample (static at >= {t:.0%})"
        return ("injection" if u >= t else "fine-tuning"), ev
    return ("injection" if hi < t else "fine-tuning" if lo > t else "uncertain"), ev


def short(source: str, share: float | None = None) -> str:
    """``off`` / ``on`` for a pure source; a blend shows its on-policy share when given."""
    if source in SHORT:
        return SHORT[source]
    return f"blend({share:.2f})" if source == "blend" and share is not None else source


def path_text(sources: Sequence[str], sep: str = "-", empty: str = "init") -> str:
    """``["static", "onpolicy"]`` -> ``"off-on"`` (``sep=","`` gives the config form ``"off,on"``)."""
    return sep.join(short(s) for s in sources) if sources else empty


def _token(tok: str, where: str) -> str:
    key = tok.strip().lower().replace("_", "-")
    if key not in _TOKENS:
        raise ValueError(
            f"bad data-source token {tok!r} in {where}; use off/static or on/onpolicy/on-policy"
        )
    return _TOKENS[key]


def parse_path(path: str | Sequence[str]) -> list[str]:
    """``"off,on"`` -> ``["static", "onpolicy"]``; a list (e.g. from YAML) is accepted too."""
    if isinstance(path, str):
        tokens = path.split(",")
        where = f"path {path!r}"
    else:
        tokens = list(path)
        where = f"path {tokens!r}"
    if not tokens or all(not str(t).strip() for t in tokens):
        raise ValueError(f"empty {where}; expected e.g. 'off,on'")
    out = []
    for i, t in enumerate(tokens, start=1):
        if not str(t).strip():
            raise ValueError(f"empty token at position {i} in {where}")
        out.append(_token(str(t), where))
    return out


def blend_share(bs: float, threshold: float = 0.5, width: float = 0.2) -> float:
    """On-policy share for a boundary score: clip(0.5 + (bs - threshold) / width, 0, 1).

    A linear ramp centred on the threshold: a policy exactly at the boundary gets half static and
    half on-policy pairs; the share reaches 0 at ``threshold - width/2`` and 1 at
    ``threshold + width/2`` (``width`` is the full width of the ramp). Outside the ramp the
    blend is a pure source, so far from the boundary ``blend`` behaves like ``auto``.
    """
    bs, threshold, width = float(bs), float(threshold), float(width)
    if not math.isfinite(bs):
        raise ValueError(f"boundary score must be finite, got {bs}")
    if not width > 0:
        raise ValueError(f"blend width must be > 0, got {width}")
    # Rounded so that a score exactly at a ramp end gives exactly 0 or 1 (a pure source) instead
    # of 0.9999999999999999 from float arithmetic.
    return min(1.0, max(0.0, round(0.5 + (bs - threshold) / width, 12)))


def _pure(source: str, reason: str) -> Choice:
    return Choice(source, 1.0 if source == "onpolicy" else 0.0, reason)  # type: ignore[arg-type]


def choose(
    kind: str,
    iteration: int,
    decision: str | None,
    bs: float | None,
    previous: Choice | None,
    *,
    path: str | Sequence[str] | None = None,
    threshold: float = 0.5,
    first: str = "static",
    blend_width: float = 0.2,
    rule: str = "bs",
    evidence: str | None = None,
) -> Choice:
    """The data source for ``iteration`` (1-based) under schedule ``kind``.

    ``decision``/``bs`` come from the boundary measurement of the current policy (None when it was
    not measured); for ``auto`` the decision is that of ``rule`` and ``evidence`` says what it saw
    (:func:`rule_decision`). ``previous`` is the previous iteration's Choice (None on the first).
    ``first`` is the fallback for ``auto``/``blend`` when there is nothing measured or nothing to keep.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(KINDS)}")
    if isinstance(iteration, bool) or int(iteration) != iteration or iteration < 1:
        raise ValueError(f"iteration is 1-based, got {iteration!r}")
    iteration = int(iteration)
    if decision is not None and decision not in _DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; expected one of {', '.join(_DECISIONS)}")
    first_src = _token(first, "first")
    bs_txt = "not measured" if bs is None else f"BS={bs:.3f}"

    if kind in PURE:
        return _pure(kind, f"fixed schedule '{kind}'")
    if kind in MIXED:
        return Choice(kind, 1.0, f"fixed source '{kind}'")  # type: ignore[arg-type]

    if kind == "path":
        if path is None:
            raise ValueError("schedule kind 'path' needs a path, e.g. path='off,on'")
        steps = parse_path(path)
        if iteration > len(steps):
            raise ValueError(
                f"path {','.join(steps)} has {len(steps)} step(s) but iteration {iteration} was "
                "requested; give one token per iteration"
            )
        return _pure(steps[iteration - 1], f"path step {iteration}/{len(steps)}")

    if kind == "auto":
        ev = evidence or bs_txt
        if decision is None:
            return _pure(first_src, f"auto ({rule}): nothing measured, using first={first_src}")
        # a race measures which source helps, not the stage it implies: say what it saw
        if decision == "injection":
            return _pure("static", f"auto ({rule}): {'static won' if rule == 'race' else 'injection stage'} ({ev})")
        if decision == "fine-tuning":
            return _pure("onpolicy", f"auto ({rule}): {'on-policy won' if rule == 'race' else 'fine-tuning stage'} "
                                     f"({ev})")
        if previous is None:
            return _pure(first_src, f"auto ({rule}): uncertain ({ev}), nothing to keep -> {first_src}")
        return Choice(
            previous.source,
            previous.onpolicy_share,
            f"auto ({rule}): uncertain ({ev}), keeping previous {previous.source}",
        )

    # blend
    if bs is None:
        return _pure(first_src, f"blend: boundary not measured, using first={first_src}")
    share = blend_share(bs, threshold, blend_width)
    reason = (
        f"blend: {bs_txt}, threshold {threshold}, width {blend_width} "
        f"-> on-policy share {share:.3f}"
    )
    if share == 0.0:
        return _pure("static", reason)
    if share == 1.0:
        return _pure("onpolicy", reason)
    return Choice("blend", share, reason)


def next_choice(schedule, threshold: float, iteration: int, measure: dict | None, previous: Choice | None,
                race: dict | None = None) -> Choice:
    """The choice for `iteration` from a run's `schedule:` section and its recorded boundary
    measurement (a `measure` stage result; None or ``measured: false`` when not measured), or, for
    ``rule: race``, the race's result (``stagealign.race``; None when there was no race).

    The pipeline decides with it, and the grid predicts with it which finished cell a schedule
    will follow, so both always agree.
    """
    measured = bool(measure and measure.get("measured"))
    decision, evidence = (measure.get("decision") if measured else None), None
    if races(schedule.kind, schedule.rule):
        decision = race["decision"] if race else None
        evidence = race["evidence"] if race else None
    elif schedule.kind == "auto" and measured:
        decision, evidence = rule_decision(schedule.rule, measure, threshold)
    return choose(schedule.kind, iteration, decision, measure.get("bs") if measured else None, previous,
                  path=parse_path(schedule.path) if schedule.path else None, threshold=threshold,
                  first=schedule.first, blend_width=schedule.blend_width, rule=schedule.rule, evidence=evidence)

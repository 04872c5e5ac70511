"""Race-and-keep: let the two data sources race from the same checkpoint and keep the winner.

The boundary score predicts which source will help next from how the policy's answers compare
with the pool's; the race measures it. From policy_{k-1} it trains two short copies, one on
static pairs and one on on-policy pairs of the same `schedule.race_share` of the iteration's
prompts, then compares the copies head to head on the probe prompts: both sample with the same
seeds (common random numbers, so the votes only see where the copies differ), the judge votes
P(on-policy copy's answer beats the static copy's), and the probe stops as soon as the
prompt-clustered interval excludes 1/2 (`stats.SequentialProbe`, as the boundary probe does).

Keep: the winner copy is saved and the iteration continues from it on the winner's source for
the other prompts (the pipeline leaves the race prompts out of its build and anchors the
reference at policy_{k-1}, as always). So the winner's training, and its on-policy samples when
on-policy won, are part of the iteration; the race's extra cost is the loser's training, the
head-to-head sampling, and the race's samples when static won.

Budget: `schedule.race_budget` caps that extra cost in policy token passes, as a share of the
iteration's training (estimated from the copies: their passes scaled by iteration prompts over
race prompts). The head to head stops before a look that would overspend it, after one look at
least. The cap is the issue's cost goal written as a setting, not a value tuned on outcomes.

The decision is the point-estimate winner even when the interval still holds 1/2 (race-and-keep
must continue with one of them); the evidence says whether it was significant and why the probe
stopped. When a source yields no pairs at all (every candidate tied) there is nothing to race:
the decision is "uncertain" and `auto` keeps its previous source.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stagealign.boundary import votes_for_many
from stagealign.config import BoundaryConfig, GenerationConfig, LoraSettings, TrainingConfig
from stagealign.data.schema import Prompt
from stagealign.generation import generate
from stagealign.judges.base import Judge
from stagealign.policy import Policy
from stagealign.seeds import look_seed
from stagealign.stats import SequentialProbe, cluster_mean
from stagealign.training.preference import train_preference

SOURCES = ("static", "onpolicy")
#: the fewest prompts a race trains its copies on (all of them when there are fewer)
RACE_MIN_PROMPTS = 16


def race_prompts(n: int, share: float) -> int:
    """How many of an iteration's `n` prompts the race uses: `share` of them, at least
    RACE_MIN_PROMPTS (a small dataset's 5% would give the copies no pairs to learn from)."""
    return min(n, max(RACE_MIN_PROMPTS, round(share * n)))


@dataclass
class RaceResult:
    decision: str  # injection (static won) | fine-tuning (on-policy won) | uncertain (nothing to race)
    evidence: str
    winner: str | None  # static | onpolicy (None: nothing to race)
    win_rate: float | None  # P(on-policy copy beats static copy), pooled over the probe's votes
    lo: float | None
    hi: float | None
    significant: bool  # the interval excludes 1/2
    prompts: int
    comparisons: int
    looks: int
    stopped: str = ""  # significant | budget | probe (every probe prompt used)
    kept: bool = False  # the winner copy was handed to `keep`: the iteration continues from it
    prompt_ids: list[str] = field(default_factory=list)  # the race's prompts (the iteration's build skips them)
    pairs: dict[str, int] = field(default_factory=dict)  # race pairs per source
    train_seconds: dict[str, float] = field(default_factory=dict)
    #: policy token passes, the boundary probe's convention: training 4 per token (forward + backward
    #: ~ 3, reference 1) per epoch; generation 1 per prompt or generated token
    train_token_passes: dict[str, int] = field(default_factory=dict)
    sample_token_passes: int = 0  # the race prompts' on-policy candidates
    sample_seconds: float = 0.0  # sampling, judging and pairing the race prompts
    h2h_token_passes: int = 0  # the copies' head-to-head answers
    budget_token_passes: int | None = None  # schedule.race_budget x the iteration's estimated training
    seconds: float = 0.0  # the whole race, pair building and saving the winner included

    @property
    def kept_seconds(self) -> float:
        """Work the iteration would have done anyway: the winner's training, and its sampling when
        on-policy won (the build does not sample the race prompts again)."""
        if self.winner is None or not self.kept:
            return 0.0
        return self.train_seconds[self.winner] + (self.sample_seconds if self.winner == "onpolicy" else 0.0)

    @property
    def kept_token_passes(self) -> int:
        if self.winner is None or not self.kept:
            return 0
        return self.train_token_passes[self.winner] + (self.sample_token_passes if self.winner == "onpolicy" else 0)

    @property
    def extra_token_passes(self) -> int:
        """The race's cost: everything it spent that the iteration does not keep."""
        return sum(self.train_token_passes.values()) + self.sample_token_passes + self.h2h_token_passes \
            - self.kept_token_passes

    @property
    def extra_seconds(self) -> float:
        return self.seconds - self.kept_seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "extra_token_passes": self.extra_token_passes, "extra_seconds": self.extra_seconds,
                "kept_token_passes": self.kept_token_passes, "kept_seconds": self.kept_seconds}


def token_passes(tok, rows: list[dict], epochs: float) -> int:
    """Policy token passes of training on preference `rows` (prompt + chosen, prompt + rejected)
    with tokenizer `tok`; bench/science.py counts an iteration's training the same way."""
    n = sum(len(tok(r["prompt"] + " " + r[side], add_special_tokens=False)["input_ids"])
            for r in rows for side in ("chosen", "rejected"))
    return int(round(4 * epochs * n))


def sampling_passes(policy: Policy, prompts: list[Prompt], sampled) -> int:
    """Policy token passes of `sampled` (a `generate` result for `prompts`): each prompt's tokens
    once per answer, and each generated token once."""
    return sum(len(x) for per in sampled.token_ids for x in per) + sum(
        len(policy.tokenizer(policy.format(q))["input_ids"]) * len(per) for q, per in zip(prompts, sampled.token_ids))


def head_to_head(on: Policy, off: Policy, probe: list[Prompt], judge: Judge, cfg: BoundaryConfig,
                 gen: GenerationConfig, *, seed: int, max_passes: float = math.inf) -> tuple[dict, int]:
    """P(on's answer beats off's) over probe prompts with sequential stopping at 1/2, and before a
    look that would take the generation token passes past `max_passes` (one look at least);
    returns the estimate (with looks, prompts, comparisons, why it stopped) and the passes spent."""
    probe = probe[: cfg.probe_prompts]
    batch = cfg.batch_prompts if cfg.sequential else len(probe)
    seq = SequentialProbe(max_clusters=len(probe), batch_size=batch, threshold=0.5, level=cfg.level,
                          min_clusters=min(cfg.min_prompts, len(probe)))
    clusters: list[np.ndarray] = []
    passes, look_passes, stopped = 0, 0, "probe"
    for look, start in enumerate(range(0, len(probe), batch)):
        if look and passes + look_passes > max_passes:  # the next look would cost about what the last did
            stopped = "budget"
            break
        chunk = probe[start:start + batch]
        answers, before = [], passes
        for policy in (on, off):  # same seed for both copies: their samples differ only where they do
            s = generate(policy, chunk, n=cfg.samples, temperature=gen.temperature, top_p=gen.top_p,
                         max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, seed=look_seed(seed, look),
                         backend=gen.backend)
            answers.append(s.texts)
            passes += sampling_passes(policy, chunk, s)
        look_passes = passes - before
        votes = votes_for_many(judge, [p.text for p in chunk], answers[0], answers[1], cfg.votes == "hard")
        clusters.extend(votes)
        seq.add(votes)
        if cfg.sequential and seq.done:
            stopped = "probe" if seq.decision() == "uncertain" else "significant"
            break
    est = cluster_mean(clusters, level=cfg.level)
    return {"mean": est.mean, "lo": est.lo, "hi": est.hi, "prompts": len(clusters), "stopped": stopped,
            "comparisons": int(sum(v.size for v in clusters)), "looks": seq.looks}, passes


def race(load: Callable[[], Policy], rows: dict[str, list[dict]], probe: list[Prompt], judge: Judge,
         training: TrainingConfig, boundary: BoundaryConfig, gen: GenerationConfig, *, seed: int, work_dir: Path,
         keep: Callable[[Policy], None] | None = None, scale: float = 1 / 0.05, budget: float = math.inf,
         ref_policy: Policy | None = None, lora: LoraSettings | None = None, prompt_ids: list[str] | None = None,
         sample_seconds: float = 0.0, sample_passes: int = 0) -> RaceResult:
    """Train a copy of `load()` on each source's race `rows`, race the copies, say who won and
    hand the winner copy to `keep` (the pipeline saves it).

    The copies train exactly as the iteration would (`training`, `ref_policy`, `lora`), only on
    fewer pairs. `scale` is the iteration's prompts over the race's (it turns the copies' training
    into an estimate of the iteration's) and `budget` the share of that the race may spend beyond
    what it keeps. `sample_seconds` / `sample_passes` are what building the race's pairs cost
    (sampling the on-policy candidates), so the result's cost covers the whole race.
    """
    t0 = time.perf_counter()
    ids = list(prompt_ids or [])
    missing = [s for s in SOURCES if not rows.get(s)]
    if missing:  # (every candidate tied, or empty): nothing to race; auto keeps the previous source
        return RaceResult(decision="uncertain", winner=None, win_rate=None, lo=None, hi=None, significant=False,
                          prompts=0, comparisons=0, looks=0, pairs={s: len(rows.get(s) or []) for s in SOURCES},
                          evidence=f"race: no {' or '.join(missing)} pairs to train a copy on (raise "
                                   "schedule.race_share), nothing raced", prompt_ids=ids,
                          seconds=time.perf_counter() - t0 + sample_seconds, sample_seconds=sample_seconds,
                          sample_token_passes=sample_passes)
    copies: dict[str, Policy] = {}
    secs: dict[str, float] = {}
    train_passes: dict[str, int] = {}
    for src in SOURCES:
        copy = load()
        res = train_preference(copy, rows[src], training, seed=seed, work_dir=work_dir / src, ref_policy=ref_policy,
                               where=f"race ({src} copy)", lora=lora)
        secs[src] = res.seconds
        train_passes[src] = token_passes(copy.tokenizer, rows[src], training.epochs)
        copies[src] = copy
    # what the head to head may spend: the budget, less the loser's training (the larger copy's, as
    # the loser is not known yet) and the race's samples (kept only if on-policy wins)
    budget_passes = budget * scale * sum(train_passes.values()) / len(train_passes)
    left = budget_passes - max(train_passes.values()) - sample_passes
    est, h2h_passes = head_to_head(copies["onpolicy"], copies["static"], probe, judge, boundary, gen, seed=seed,
                                   max_passes=left)
    winner = "onpolicy" if est["mean"] > 0.5 else "static"
    if keep is not None:
        keep(copies[winner])
    copies.clear()
    gc.collect()
    significant = not (est["lo"] <= 0.5 <= est["hi"])
    evidence = (f"race: on-policy copy beats static copy {est['mean']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}] "
                f"on {est['prompts']} probe prompts{'' if significant else ', not significant'}"
                + (" (race budget spent)" if est["stopped"] == "budget" else ""))
    return RaceResult(decision="fine-tuning" if winner == "onpolicy" else "injection", evidence=evidence,
                      winner=winner, win_rate=est["mean"], lo=est["lo"], hi=est["hi"], significant=significant,
                      prompts=est["prompts"], comparisons=est["comparisons"], looks=est["looks"],
                      stopped=est["stopped"], kept=keep is not None, prompt_ids=ids,
                      pairs={s: len(rows[s]) for s in SOURCES}, train_seconds=secs, train_token_passes=train_passes,
                      sample_token_passes=sample_passes, sample_seconds=sample_seconds, h2h_token_passes=h2h_passes,
                      budget_token_passes=None if math.isinf(budget_passes) else int(budget_passes),
                      seconds=time.perf_counter() - t0 + sample_seconds)

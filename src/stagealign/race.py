"""Race-and-keep: let the two data sources race from the same checkpoint and keep the winner's.

The boundary score predicts which source will help next from how the policy's answers compare
with the pool's; the race measures it. From policy_{k-1} it trains two short copies, one on
static pairs and one on on-policy pairs of the same `schedule.race_share` of the iteration's
prompts, then compares the copies head to head on the probe prompts: both sample with the same
seeds (common random numbers, so the votes only see where the copies differ), the judge votes
P(on-policy copy's answer beats the static copy's), and the probe stops as soon as the
prompt-clustered interval excludes 1/2 (`stats.SequentialProbe`, as the boundary probe does).

The iteration then trains on the winner's source from policy_{k-1} (the copies are thrown away,
so the race's whole training is its cost, recorded next to the decision: wall seconds and policy
token passes). The decision is the point-estimate winner even when the interval still holds 1/2
(race-and-keep must continue with one of them); the evidence says whether it was significant.
When a source yields no pairs at all (every candidate tied) there is nothing to race: the decision
is "uncertain" and `auto` keeps its previous source.
"""

from __future__ import annotations

import gc
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
    pairs: dict[str, int] = field(default_factory=dict)  # race pairs per source
    train_seconds: dict[str, float] = field(default_factory=dict)
    #: policy token passes of the race: training (4 per token: forward + backward ~ 3, reference 1,
    #: per epoch) plus generation (1 per prompt or generated token), the boundary probe's convention
    train_token_passes: int = 0
    gen_token_passes: int = 0
    seconds: float = 0.0  # the whole race, pair building included

    def to_dict(self) -> dict:
        return asdict(self)


def token_passes(tok, rows: list[dict], epochs: float) -> int:
    """Policy token passes of training on preference `rows` (prompt + chosen, prompt + rejected)
    with tokenizer `tok`; bench/science.py counts an iteration's training the same way."""
    n = sum(len(tok(r["prompt"] + " " + r[side], add_special_tokens=False)["input_ids"])
            for r in rows for side in ("chosen", "rejected"))
    return int(round(4 * epochs * n))


def head_to_head(on: Policy, off: Policy, probe: list[Prompt], judge: Judge, cfg: BoundaryConfig,
                 gen: GenerationConfig, *, seed: int) -> tuple[dict, int]:
    """P(on's answer beats off's) over probe prompts with sequential stopping at 1/2; returns the
    estimate (with looks, prompts, comparisons) and the generation token passes it cost."""
    probe = probe[: cfg.probe_prompts]
    batch = cfg.batch_prompts if cfg.sequential else len(probe)
    seq = SequentialProbe(max_clusters=len(probe), batch_size=batch, threshold=0.5, level=cfg.level,
                          min_clusters=min(cfg.min_prompts, len(probe)))
    clusters: list[np.ndarray] = []
    passes = 0
    for look, start in enumerate(range(0, len(probe), batch)):
        chunk = probe[start:start + batch]
        answers = []
        for policy in (on, off):  # same seed for both copies: their samples differ only where they do
            s = generate(policy, chunk, n=cfg.samples, temperature=gen.temperature, top_p=gen.top_p,
                         max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, seed=look_seed(seed, look),
                         backend=gen.backend)
            answers.append(s.texts)
            passes += sum(len(x) for per in s.token_ids for x in per)
            passes += sum(len(policy.tokenizer(policy.format(p))["input_ids"]) * cfg.samples for p in chunk)
        votes = votes_for_many(judge, [p.text for p in chunk], answers[0], answers[1], cfg.votes == "hard")
        clusters.extend(votes)
        seq.add(votes)
        if cfg.sequential and seq.done:
            break
    est = cluster_mean(clusters, level=cfg.level)
    return {"mean": est.mean, "lo": est.lo, "hi": est.hi, "prompts": len(clusters),
            "comparisons": int(sum(v.size for v in clusters)), "looks": seq.looks}, passes


def race(load: Callable[[], Policy], rows: dict[str, list[dict]], probe: list[Prompt], judge: Judge,
         training: TrainingConfig, boundary: BoundaryConfig, gen: GenerationConfig, *, seed: int, work_dir: Path,
         ref_policy: Policy | None = None, lora: LoraSettings | None = None, build_seconds: float = 0.0,
         build_gen_passes: int = 0) -> RaceResult:
    """Train a copy of `load()` on each source's race `rows`, race the copies, say who won.

    The copies train exactly as the iteration would (`training`, `ref_policy`, `lora`), only on
    fewer pairs. `build_seconds` / `build_gen_passes` are what building the race's pairs cost
    (sampling the on-policy candidates), so the result's cost covers the whole race.
    """
    t0 = time.perf_counter()
    missing = [s for s in SOURCES if not rows.get(s)]
    if missing:  # (every candidate tied, or empty): nothing to race; auto keeps the previous source
        return RaceResult(decision="uncertain", winner=None, win_rate=None, lo=None, hi=None, significant=False,
                          prompts=0, comparisons=0, looks=0, pairs={s: len(rows.get(s) or []) for s in SOURCES},
                          evidence=f"race: no {' or '.join(missing)} pairs to train a copy on (raise "
                                   "schedule.race_share), nothing raced", seconds=time.perf_counter() - t0 + build_seconds,
                          gen_token_passes=build_gen_passes)
    copies: dict[str, Policy] = {}
    secs: dict[str, float] = {}
    train_passes = 0
    for src in SOURCES:
        copy = load()
        res = train_preference(copy, rows[src], training, seed=seed, work_dir=work_dir / src, ref_policy=ref_policy,
                               where=f"race ({src} copy)", lora=lora)
        secs[src] = res.seconds
        train_passes += token_passes(copy.tokenizer, rows[src], training.epochs)
        copies[src] = copy
    est, gen_passes = head_to_head(copies["onpolicy"], copies["static"], probe, judge, boundary, gen, seed=seed)
    copies.clear()
    gc.collect()
    winner = "onpolicy" if est["mean"] > 0.5 else "static"
    significant = not (est["lo"] <= 0.5 <= est["hi"])
    evidence = (f"race: on-policy copy beats static copy {est['mean']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}] "
                f"on {est['prompts']} probe prompts{'' if significant else ', not significant'}")
    return RaceResult(decision="fine-tuning" if winner == "onpolicy" else "injection", evidence=evidence,
                      winner=winner, win_rate=est["mean"], lo=est["lo"], hi=est["hi"], significant=significant,
                      prompts=est["prompts"], comparisons=est["comparisons"], looks=est["looks"],
                      pairs={s: len(rows[s]) for s in SOURCES}, train_seconds=secs,
                      train_token_passes=train_passes, gen_token_passes=gen_passes + build_gen_passes,
                      seconds=time.perf_counter() - t0 + build_seconds)

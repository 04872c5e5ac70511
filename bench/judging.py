"""Judging: comparisons per second for the boundary score and for pair building, what the score
cache saves, and what judging the probe prompts of a look together saves.

The workload is two iterations' judging as the pipeline does it, on the synthetic world (default
scale, `weak` policy; fresh on-policy answers in each iteration, the same static pool):

1. boundary score: M on-policy answers x K static answers of every probe prompt, all compared
   (`boundary.votes_for_many`, `--look` prompts per judge call as `boundary.measure` does per
   sequential look);
2. pair building: `data.pairs.score_sets` + `make_pairs` on the static sets of the training
   prompts and on N on-policy answers per training prompt.

On-policy answers are sampled once up front (not timed). Modes: `ours` (what the pipeline does:
`CachedJudge`, scalar scores memoised by (prompt, answer), and looks judged together),
`no_cache` (the bare judge), `per_prompt` (cache, but one judge call per probe prompt with
`boundary.votes_for`, as stagealign did before) and `naive` (neither, a hand-written loop). A
counting layer under the cache counts the judge evaluations actually run (answers scored, or
pairwise comparisons) and how often each static answer was scored. Judges: the world's ground
truth (scalar, cheap), a tiny HF reward model (`LlamaForSequenceClassification` built from a
config with the world's tokenizer, random weights; `judges.reward_model.RewardModelJudge`) and the
noisy pairwise ranker (pairwise only: nothing to cache, shown for completeness). Medians of
`--repeats` runs in alternating order. Writes bench/results/judging.json.

    python bench/judging.py --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import median, write_result  # noqa: E402

from stagealign.boundary import votes_for, votes_for_many  # noqa: E402
from stagealign.data.pairs import make_pairs, score_sets  # noqa: E402
from stagealign.data.schema import CandidateSet  # noqa: E402
from stagealign.judges.base import CachedJudge, Judge  # noqa: E402


# mode -> (CachedJudge?, boundary votes judged per look (True) or per prompt (False))
MODES_SETUP = {"ours": (True, True), "no_cache": (False, True), "per_prompt": (True, False), "naive": (False, False)}
MODES = list(MODES_SETUP)


class Counting(Judge):
    """Passes through to `inner`, counting evaluations and how often each (prompt, answer) is scored."""

    def __init__(self, inner: Judge):
        self.inner, self.name = inner, inner.name
        self.pairwise_only, self.temperature = inner.pairwise_only, inner.temperature
        self.scored: Counter = Counter()
        self.comparisons = 0

    def _score(self, prompts, answers):
        self.scored.update(zip(prompts, answers))
        return self.inner.score(prompts, answers)

    def _prob(self, prompts, a, b):
        if self.pairwise_only:
            self.comparisons += len(a)
            return self.inner.prob(prompts, a, b)
        return super()._prob(prompts, a, b)

    @property
    def evaluations(self) -> int:
        return sum(self.scored.values()) + self.comparisons


def tiny_reward_model(world, path: Path) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from stagealign.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer(world)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, num_labels=1,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def workload(judge: Judge, probe, train, pool, answers, look: int | None) -> dict:
    """Two iterations of judging: boundary score, then pair building (static + on-policy sets).

    `look`: probe prompts judged together (`boundary.votes_for_many`, as `boundary.measure` does per
    sequential look); None: one judge call per prompt (`votes_for`, as before)."""
    out = {}
    for it, (on_probe, on_train) in enumerate(answers, start=1):
        t0 = time.perf_counter()
        comps = 0
        if look is None:
            for p, a in zip(probe, on_probe):
                comps += votes_for(judge, p.text, a, pool[p.id].candidates, hard=False).size
        else:
            for i in range(0, len(probe), look):
                ps = probe[i:i + look]
                votes = votes_for_many(judge, [p.text for p in ps], on_probe[i:i + look],
                                       [pool[p.id].candidates for p in ps], hard=False)
                comps += sum(v.size for v in votes)
        out[f"boundary_{it}"] = {"seconds": time.perf_counter() - t0, "comparisons": comps}
        t0 = time.perf_counter()
        static = [CandidateSet(prompt_id=s.prompt_id, prompt=s.prompt, candidates=list(s.candidates),
                               sources=list(s.sources), origin="static") for s in (pool[p.id] for p in train)]
        onpol = [CandidateSet(prompt_id=p.id, prompt=p.text, candidates=list(dict.fromkeys(a)),
                              sources=["policy"] * len(dict.fromkeys(a)), origin="onpolicy")
                 for p, a in zip(train, on_train)]
        sets = static + onpol
        score_sets(sets, judge)
        pairs, _ = make_pairs(sets)
        if judge.pairwise_only:  # pairwise judges compare every pair of candidates in a set
            units = sum(len(s.candidates) * (len(s.candidates) - 1) // 2 for s in sets)
        else:
            units = sum(len(s.candidates) for s in sets)
        out[f"pairs_{it}"] = {"seconds": time.perf_counter() - t0, "comparisons": units, "pairs": len(pairs)}
    return out


def per_second(steps: dict, kind: str) -> float:
    keys = [k for k in steps if k.startswith(kind)]
    return sum(steps[k]["comparisons"] for k in keys) / sum(steps[k]["seconds"] for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe", type=int, default=256, help="probe prompts (the default scale has 256)")
    ap.add_argument("--train", type=int, default=1024, help="training prompts (the default scale has 1024)")
    ap.add_argument("--m", type=int, default=2, help="on-policy answers per probe prompt (boundary.samples)")
    ap.add_argument("--n", type=int, default=4, help="on-policy answers per training prompt (generation.n)")
    ap.add_argument("--look", type=int, default=32, help="probe prompts per judge call (boundary.batch_prompts)")
    ap.add_argument("--judges", nargs="+", default=["ground_truth", "reward_model", "noisy"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from stagealign.config import load_config
    from stagealign.generation import sample
    from stagealign.judges.reward_model import RewardModelJudge
    from stagealign.policy import load_policy
    from stagealign.providers import build_provider
    from stagealign.testbed.judges import GroundTruthJudge, NoisyJudge
    from stagealign.testbed.world import World
    from stagealign.training.common import quiet_libraries

    quiet_libraries()
    t_start = time.time()
    cfg = load_config(None, ["policy.testbed=weak"])
    prov = build_provider(cfg, log=lambda m: None)
    world = World(cfg.world)
    probe, train, pool = prov.probe[: args.probe], prov.train[: args.train], prov.pool
    policy = load_policy(prov.initial_policy)
    gen = dict(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size)
    answers = [(sample(policy, [p.text for p in probe], n=args.m, seed=10 * it + 1, **gen),
                sample(policy, [p.text for p in train], n=args.n, seed=10 * it + 2, **gen)) for it in (1, 2)]
    static_keys = {(p.text, a) for p in probe + train for a in pool[p.id].candidates}

    with tempfile.TemporaryDirectory() as d:
        makers = {
            "ground_truth": lambda: GroundTruthJudge(world),
            "reward_model": lambda: RewardModelJudge(tiny_reward_model(world, Path(d) / "rm"), batch_size=64,
                                                     device="cpu"),
            "noisy": lambda: NoisyJudge(world, seed=0),
        }
        judges = {name: makers[name]() for name in args.judges}
        for j in judges.values():  # warm-up (first calls allocate)
            j.prob([probe[0].text] * 2, answers[0][0][0], answers[0][0][0][::-1])
        runs = []
        for r in range(args.repeats):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                cached, look = MODES_SETUP[mode]
                for name, inner in judges.items():
                    counting = Counting(inner)
                    judge = CachedJudge(counting) if cached else counting
                    res = workload(judge, probe, train, pool, answers, args.look if look else None)
                    static_scores = [c for k, c in counting.scored.items() if k in static_keys]
                    runs.append({"judge": name, "mode": mode, "repeat": r, "steps": res,
                                 "evaluations": counting.evaluations,
                                 "static_answers_scored": len(static_scores),
                                 "max_scorings_per_static_answer": max(static_scores, default=0),
                                 "mean_scorings_per_static_answer": float(np.mean(static_scores))
                                 if static_scores else 0.0})
                    print(f"repeat {r} {name:13s} {mode:10s} evaluations {counting.evaluations:7d}  boundary "
                          f"{per_second(res, 'boundary'):8.0f}/s  pairs {per_second(res, 'pairs'):8.0f}/s", flush=True)

    summary = {}
    for name in args.judges:
        entry = {}
        for mode in MODES:
            rs = [x for x in runs if x["judge"] == name and x["mode"] == mode]
            entry[mode] = {
                "evaluations": rs[0]["evaluations"],
                "max_scorings_per_static_answer": rs[0]["max_scorings_per_static_answer"],
                "mean_scorings_per_static_answer": rs[0]["mean_scorings_per_static_answer"],
                "boundary_comparisons_per_second": median([per_second(x["steps"], "boundary") for x in rs]),
                "pairs_comparisons_per_second": median([per_second(x["steps"], "pairs") for x in rs]),
                "seconds": median([sum(v["seconds"] for v in x["steps"].values()) for x in rs]),
            }
        first = next(x for x in runs if x["judge"] == name)["steps"]
        entry["comparisons"] = {step: v["comparisons"] for step, v in first.items()}
        entry["pairs_unit"] = "pairwise comparisons" if judges[name].pairwise_only else "candidates scored"
        entry["evaluations_saved_by_cache"] = 1 - entry["ours"]["evaluations"] / entry["no_cache"]["evaluations"]
        entry["time_no_cache_over_ours"] = entry["no_cache"]["seconds"] / entry["ours"]["seconds"]
        entry["boundary_ours_over_per_prompt"] = (entry["ours"]["boundary_comparisons_per_second"]
                                                  / entry["per_prompt"]["boundary_comparisons_per_second"])
        entry["time_naive_over_ours"] = entry["naive"]["seconds"] / entry["ours"]["seconds"]
        summary[name] = entry
        print(f"{name:13s} evaluations {entry['ours']['evaluations']} with the cache vs "
              f"{entry['no_cache']['evaluations']} without ({entry['evaluations_saved_by_cache']:.0%} saved); a static "
              f"answer scored at most {entry['ours']['max_scorings_per_static_answer']}x vs "
              f"{entry['no_cache']['max_scorings_per_static_answer']}x; boundary judging batched/per-prompt "
              f"{entry['boundary_ours_over_per_prompt']:.2f}x; whole workload naive/ours "
              f"{entry['time_naive_over_ours']:.2f}x")
    path = write_result("judging", {"args": vars(args), "seconds_total": time.time() - t_start,
                                    "summary": summary, "runs": runs}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

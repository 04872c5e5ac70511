"""Scaling: time and peak memory of one on-policy iteration against model size and prompt count.

One iteration, stage by stage, as the pipeline runs it: sample N answers per training prompt
(`generation.sample`), score them and build max-min pairs (`data.pairs`, the world's
ground-truth judge behind `CachedJudge`), train one DPO epoch on the pairs
(`training.preference.train_preference`, the run config's defaults). Each point runs in a fresh
child process so its peak RSS (VmHWM) is its own; `rss_over_start` is the peak minus the RSS after
imports and model creation.

Sweeps: model size (the world's Llama at `--sizes` hidden sizes, layers and MLP width scaled with
it; randomly initialised, the cost does not depend on the weights except through answer length, so
answers are always `max_new_tokens` long here) at `--size-prompts` prompts, and prompt count
(`--prompts`) at the default model. The growth rate is the least-squares slope of
log(time) (or log(memory)) on log(parameters) or log(prompts): 1 = linear. Writes
bench/results/scaling.json.

    python bench/scaling.py
    python bench/scaling.py --sizes 64 128 --prompts 128 256     # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import loglog_slope, median, peak_rss_mb, rss_mb, write_result  # noqa: E402

# hidden size -> (layers, heads); MLP width 2 x hidden like the world's default (64, 2 layers, 4 heads)
SHAPES = {32: (1, 2), 64: (2, 4), 128: (4, 4), 256: (4, 8), 512: (6, 8)}


def child(hidden: int, prompts: int, n: int, out: str) -> None:
    import torch

    from stagealign.config import load_config
    from stagealign.data.pairs import make_pairs, score_sets
    from stagealign.data.schema import CandidateSet
    from stagealign.generation import sample
    from stagealign.judges.base import CachedJudge
    from stagealign.data.schema import prompt_id
    from stagealign.testbed.judges import GroundTruthJudge
    from stagealign.testbed.policies import fresh_policy
    from stagealign.testbed.world import World
    from stagealign.training.common import quiet_libraries
    from stagealign.training.preference import train_preference

    quiet_libraries()
    layers, heads = SHAPES[hidden]
    cfg = load_config(None, ["policy.testbed=weak", f"world.model.hidden_size={hidden}", f"world.model.layers={layers}",
                             f"world.model.heads={heads}", f"world.model.intermediate_size={2 * hidden}"])
    world = World(cfg.world)
    texts = world.prompts("train")[:prompts]
    policy = fresh_policy(world, seed=0)
    params = sum(p.numel() for p in policy.model.parameters())
    judge = CachedJudge(GroundTruthJudge(world))
    rss0 = rss_mb()
    rec = {"hidden": hidden, "layers": layers, "params": params, "prompts": len(texts), "n": n}
    t0 = time.perf_counter()
    answers = sample(policy, texts, n=n, max_new_tokens=cfg.generation.max_new_tokens,
                     batch_size=cfg.generation.batch_size, seed=0)
    t1 = time.perf_counter()
    sets = [CandidateSet(prompt_id=prompt_id(t), prompt=t, candidates=list(dict.fromkeys(a)),
                         sources=["policy"] * len(dict.fromkeys(a)), origin="onpolicy") for t, a in zip(texts, answers)]
    score_sets(sets, judge)
    pairs, _ = make_pairs(sets)
    t2 = time.perf_counter()
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    with tempfile.TemporaryDirectory() as work:
        res = train_preference(policy, rows, cfg.training, seed=0, work_dir=Path(work))
    t3 = time.perf_counter()
    rec.update({"pairs": len(rows), "seconds": {"generation": t1 - t0, "judging": t2 - t1, "training": t3 - t2,
                                                "total": t3 - t0},
                "train_steps": res.steps, "peak_rss_mb": peak_rss_mb(), "rss_start_mb": rss0,
                "torch_threads": torch.get_num_threads()})
    rec["peak_rss_over_start_mb"] = rec["peak_rss_mb"] - rss0
    Path(out).write_text(json.dumps(rec))


def run_point(hidden: int, prompts: int, n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "rec.json"
        p = subprocess.run([sys.executable, __file__, "--child", str(hidden), str(prompts), "--n", str(n),
                            "--child-out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0 or not out.is_file():
            raise RuntimeError(f"point hidden={hidden} prompts={prompts} failed:\n{p.stderr[-3000:]}")
        return json.loads(out.read_text())


def growth(points: list[dict], x: str) -> dict:
    xs = [p[x] for p in points]
    out = {"x": x, "points": len(points)}
    for stage in ("generation", "judging", "training", "total"):
        out[f"time_{stage}_slope"] = loglog_slope(xs, [p["seconds"][stage] for p in points])
    out["peak_rss_slope"] = loglog_slope(xs, [p["peak_rss_mb"] for p in points])
    out["peak_rss_over_start_slope"] = loglog_slope(xs, [max(p["peak_rss_over_start_mb"], 1e-3) for p in points])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], choices=sorted(SHAPES))
    ap.add_argument("--size-prompts", type=int, default=512, help="prompts in the model-size sweep")
    ap.add_argument("--prompts", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--n", type=int, default=4, help="answers per prompt")
    ap.add_argument("--repeats", type=int, default=1, help="runs per point (medians)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.n, args.child_out)
        return
    t_start = time.time()
    todo = [(h, args.size_prompts) for h in args.sizes] + [(64, p) for p in args.prompts]
    todo = list(dict.fromkeys(todo))
    points = {}
    for r in range(args.repeats):
        for h, p in todo:
            rec = run_point(h, p, args.n)
            points.setdefault((h, p), []).append(rec)
            print(f"hidden {h:4d} ({rec['params']:>9,d} params) prompts {p:5d}: " + "  ".join(
                f"{k} {v:6.1f}s" for k, v in rec["seconds"].items()) + f"  peak RSS {rec['peak_rss_mb']:.0f} MiB "
                  f"(+{rec['peak_rss_over_start_mb']:.0f})", flush=True)

    def med(recs):
        m = dict(recs[0])
        m["seconds"] = {k: median([r["seconds"][k] for r in recs]) for k in recs[0]["seconds"]}
        for k in ("peak_rss_mb", "peak_rss_over_start_mb"):
            m[k] = median([r[k] for r in recs])
        return m

    by_size = [med(points[(h, args.size_prompts)]) for h in args.sizes]
    by_prompts = [med(points[(64, p)]) for p in args.prompts]
    result = {"args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
              "seconds_total": time.time() - t_start,
              "model_size": {"points": by_size, "growth": growth(by_size, "params")},
              "prompts": {"points": by_prompts, "growth": growth(by_prompts, "prompts")},
              "all_runs": [r for recs in points.values() for r in recs]}
    path = write_result("scaling", result, args.out)
    for name in ("model_size", "prompts"):
        g = result[name]["growth"]
        print(f"{name}: time ~ {g['x']}^{g['time_total_slope']:.2f} (generation {g['time_generation_slope']:.2f}, "
              f"judging {g['time_judging_slope']:.2f}, training {g['time_training_slope']:.2f}); "
              f"peak RSS ~ {g['x']}^{g['peak_rss_slope']:.2f}, above start ^{g['peak_rss_over_start_slope']:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Sequential vs fixed boundary probes: same decision, at what cost?

For checkpoints of the synthetic world (the three initial policies and, for each, the
checkpoints after one static and one on-policy iteration) and several sampling seeds, this
measures the boundary score with a fixed probe of `--probe` prompts (2,000 as in the paper),
then replays the sequential rule (`stats.SequentialProbe`: batches of `--batch` prompts,
Bonferroni-corrected interim intervals, stop once the interval excludes the threshold) on the
same per-prompt votes in the same order. With equal answers per prompt, the clustered estimate
depends only on per-prompt means, so the replay is exactly what sequential mode computes on
those answers (sequential mode in `boundary.measure` would draw fresh answers per look,
statistically the same).

Reports: agreement of the decisions (share of cases, Wilson 95% CI), agreement among cases
where the fixed probe is decided (not "uncertain"), mean cost of sequential as a share of the
fixed probe, and both probes' cost as a share of one training epoch on the large scale's 8,192
training prompts (policy token passes, see `BoundaryResult.cost_vs_epoch`) next to the
paper's 3.2%, and in wall time: the probes' seconds over those of one measured DPO epoch on
the large scale's static pairs (sequential seconds estimated as the fixed probe's seconds per
prompt x prompts used). The checkpoints themselves are trained at the default scale to keep this quick. Writes bench/results/boundary_cost.json.

    python bench/boundary_cost.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import write_result  # noqa: E402

from stagealign.boundary import measure
from stagealign.config import load_config
from stagealign.pipeline import Run
from stagealign.rundir import RunDir
from stagealign.policy import load_policy
from stagealign.providers import build_provider
from stagealign.stats import SequentialProbe, proportion_ci
from stagealign.training.common import quiet_libraries


# The large scale's 11,216 disjoint prompts need 40 modifiers (8 x 40 x 39 prompts); the same
# world is used at both scales so that probes and checkpoints come from one world.
WORLD = "world.n_modifiers=40"


def checkpoints(out: Path, policies: list[str], scale: str) -> list[tuple[str, str, str]]:
    """(name, policy testbed name, checkpoint dir) for initial and one-iteration checkpoints."""
    found = []
    for pol in policies:
        for src in ("off", "on"):
            cfg = load_config(None, [f"run_dir={out / 'ckpt' / pol / src}", f"policy.testbed={pol}",
                                     f"world.scale={scale}", WORLD, "iterations=1", "schedule.kind=path",
                                     f"schedule.path={src}", "boundary.enabled=false"])
            Run(cfg).execute()
            if src == "off":
                found.append((f"{pol}@0", pol, Run(cfg).policy_path(0)))
            found.append((f"{pol}@1-{src}", pol, str(RunDir(cfg.run_dir).model(1))))
    return found


def epoch_seconds(policy_name: str, policy_dir: str) -> dict:
    """Wall time of one DPO training epoch (the run config's defaults) on the large scale's static
    max-min pairs, from the checkpoint in `policy_dir` (the default-scale initial policy: the
    large scale's own would need another SFT): the denominator of the measured time share."""
    import tempfile

    from stagealign.data.pairs import make_pairs, score_sets
    from stagealign.training.preference import train_preference

    cfg = load_config(None, [f"policy.testbed={policy_name}", "world.scale=large", WORLD])
    prov = build_provider(cfg, log=lambda m: None)
    sets = [prov.pool[p.id] for p in prov.train]
    score_sets(sets, prov.judge)
    pairs, _ = make_pairs(sets)
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        train_preference(load_policy(policy_dir), rows, cfg.training, seed=0, work_dir=Path(work))
        return {"pairs": len(rows), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--policies", nargs="+", default=["weak", "boundary", "strong"])
    ap.add_argument("--probe", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-prompts", type=int, default=32)
    ap.add_argument("--out", default="runs/bench-boundary", help="directory for the checkpoints")
    ap.add_argument("--result", default=None, help="result file (default bench/results/boundary_cost.json)")
    args = ap.parse_args()
    quiet_libraries()
    t0 = time.time()
    out = Path(args.out)
    cases = []
    found = checkpoints(out, args.policies, "default")
    for name, pol, ckpt in found:
        cfg = load_config(None, [f"run_dir={out / 'probe'}", f"policy.testbed={pol}", "world.scale=large", WORLD,
                                 f"boundary.probe_prompts={args.probe}", "boundary.sequential=false"])
        prov = build_provider(cfg, log=lambda m: None)
        policy = load_policy(ckpt)
        for seed in args.seeds:
            fixed = measure(policy, prov.probe, prov.pool, prov.judge, cfg.boundary, cfg.generation, seed=seed,
                            train_prompts=len(prov.train))  # an epoch at research scale
            votes = np.array(fixed.per_prompt)
            seq = SequentialProbe(max_clusters=len(votes), batch_size=args.batch, threshold=cfg.boundary.threshold,
                                  level=cfg.boundary.level, min_clusters=args.min_prompts)
            for start in range(0, len(votes), args.batch):
                seq.add(votes[start:start + args.batch])
                if seq.done:
                    break
            used = seq.n_clusters
            case = {"checkpoint": name, "seed": seed, "bs_fixed": fixed.bs, "lo": fixed.lo, "hi": fixed.hi,
                    "decision_fixed": fixed.decision, "decision_sequential": seq.decision(),
                    "bs_sequential": float(seq.estimate.mean), "prompts_sequential": used,
                    "prompts_fixed": fixed.prompts, "cost_share": used / fixed.prompts,
                    "fixed_cost_vs_epoch": fixed.cost_vs_epoch,
                    "sequential_cost_vs_epoch": fixed.cost_vs_epoch * used / fixed.prompts,
                    "fixed_seconds": fixed.seconds}
            cases.append(case)
            print(f"{name:18s} seed {seed}: fixed {fixed.bs:.3f} {fixed.decision:11s} | sequential "
                  f"{case['bs_sequential']:.3f} {case['decision_sequential']:11s} after {used} prompts", flush=True)
    agree = np.array([c["decision_fixed"] == c["decision_sequential"] for c in cases], dtype=float)
    decided = [c for c in cases if c["decision_fixed"] != "uncertain"]
    agree_decided = np.array([c["decision_fixed"] == c["decision_sequential"] for c in decided], dtype=float)
    epoch = epoch_seconds(*next((pol, ckpt) for name, pol, ckpt in found if name.endswith("@0")))
    for c in cases:  # sequential time ~ the fixed probe's time per prompt x prompts used
        c["sequential_seconds"] = c["fixed_seconds"] * c["prompts_sequential"] / c["prompts_fixed"]
    summary = {
        "cases": len(cases),
        "agreement": proportion_ci(agree).to_dict(json_safe=True),
        "decided_cases": len(decided),
        "agreement_decided": proportion_ci(agree_decided).to_dict(json_safe=True) if decided else None,
        "mean_cost_share": float(np.mean([c["cost_share"] for c in cases])),
        "max_cost_share": float(np.max([c["cost_share"] for c in cases])),
        "fixed_cost_vs_epoch": float(np.mean([c["fixed_cost_vs_epoch"] for c in cases])),
        "sequential_cost_vs_epoch": float(np.mean([c["sequential_cost_vs_epoch"] for c in cases])),
        "paper_cost_vs_epoch": 0.032,
        "epoch": epoch,
        "fixed_seconds_vs_epoch": float(np.mean([c["fixed_seconds"] for c in cases]) / epoch["seconds"]),
        "sequential_seconds_vs_epoch": float(np.mean([c["sequential_seconds"] for c in cases]) / epoch["seconds"]),
        "goals": {"agreement>=0.95": bool(agree.mean() >= 0.95), "cost_share<=1/3": bool(
            np.mean([c["cost_share"] for c in cases]) <= 1 / 3)},
    }
    summary["goals"]["sequential_cost_vs_epoch<=0.01"] = bool(summary["sequential_cost_vs_epoch"] <= 0.01)
    path = write_result("boundary_cost", {"args": vars(args), "seconds": time.time() - t0, "summary": summary,
                                          "cases": cases}, args.result)
    print(f"wrote {path}")
    print(summary)


if __name__ == "__main__":
    main()

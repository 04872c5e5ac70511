"""One-iteration effectiveness of static vs on-policy data, per initial policy, over seeds.

For each world seed, run seed, initial policy and method, trains one iteration on static pairs
and one on on-policy pairs from the same checkpoint and records the ground-truth gains. Writes
`bench/results/stage_effect[-TAG].json` with per-cell numbers and, per (world, policy, method),
the mean gains, their paired difference (on - static) and the ratio on/off with 95% intervals
over seeds. The paper's claim is: ratio < 1 in the injection stage (weak), > 1 in fine-tuning
(strong).

    python bench/stage_effect.py --world-seeds 0 --seeds 0 1 2 3 4 --methods dpo
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from stagealign import artifacts
from stagealign.config import load_config
from stagealign.pipeline import Run
from stagealign.stats import diff_ci, mean_ci, ratio_ci
from stagealign.training.common import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--policies", nargs="+", default=["weak", "boundary", "strong"])
    ap.add_argument("--methods", nargs="+", default=["dpo"])
    ap.add_argument("--out", default="runs/stage_effect")
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = ap.parse_args()
    quiet_libraries()
    cells, t0 = [], time.time()
    for ws in args.world_seeds:
        for pol in args.policies:
            for method in args.methods:
                for seed in args.seeds:
                    gains = {}
                    for src in ("off", "on"):
                        run_dir = Path(args.out) / f"w{ws}" / pol / method / f"s{seed}" / src
                        cfg = load_config(None, [f"run_dir={run_dir}", f"world.seed={ws}", f"policy.testbed={pol}",
                                                 f"training.method={method}", f"seed={seed}", "iterations=1",
                                                 "schedule.kind=path", f"schedule.path={src}", *args.overrides])
                        s = Run(cfg).execute()
                        r = s["iterations"][0]
                        gains[src] = r["after"] - r["before"]
                        bs = r["bs"]
                    cells.append({"world_seed": ws, "policy": pol, "method": method, "seed": seed, "bs": bs,
                                  "gain_static": gains["off"], "gain_onpolicy": gains["on"]})
                    print(json.dumps(cells[-1]), flush=True)
    groups = {}
    for c in cells:
        groups.setdefault((c["world_seed"], c["policy"], c["method"]), []).append(c)
    summary = []
    for (ws, pol, method), cs in groups.items():
        off = np.array([c["gain_static"] for c in cs])
        on = np.array([c["gain_onpolicy"] for c in cs])
        summary.append({
            "world_seed": ws, "policy": pol, "method": method, "seeds": len(cs),
            "bs": mean_ci([c["bs"] for c in cs]).to_dict(json_safe=True),
            "gain_static": mean_ci(off).to_dict(json_safe=True),
            "gain_onpolicy": mean_ci(on).to_dict(json_safe=True),
            "on_minus_static": diff_ci(on, off).to_dict(json_safe=True),
            "ratio_on_over_static": ratio_ci(on, off).to_dict(json_safe=True),
        })
    out = Path("bench/results") / f"stage_effect{'-' + args.tag if args.tag else ''}.json"
    artifacts.write_json(out, {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
        "processor": platform.processor(), "args": vars(args), "seconds": time.time() - t0,
        "summary": summary, "cells": cells})
    for s in summary:
        d = s["on_minus_static"]
        print(f"world {s['world_seed']} {s['policy']:8s} {s['method']:7s} BS {s['bs']['mean']:.3f}  "
              f"static {s['gain_static']['mean']:+.3f}  on {s['gain_onpolicy']['mean']:+.3f}  "
              f"on-static {d['mean']:+.3f} [{d['lo']}, {d['hi']}]  ratio {s['ratio_on_over_static']['mean']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

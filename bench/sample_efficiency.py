"""Sample efficiency on the synthetic world: ground-truth reward gained per 1,000 training pairs by
the boundary-score schedules (`auto`, `blend`) against the best and the worst fixed 2-iteration
path (off-off, off-on, on-off, on-on), per initial policy.

Gain per 1,000 pairs of a cell = (ground-truth reward after the last iteration - before the first)
/ (preference pairs trained on, all iterations) x 1,000, from each cell's `summary.json`; means
and 95% intervals over seeds. Best / worst fixed path: the fixed paths with the highest / lowest
mean gain per 1,000 pairs for that policy and method. Ratios are of means (auto / best: 1 = as
good as the best path chosen in hindsight).

By default runs the demo grid at a reduced size (`--policies`, `--seeds`, world scale default,
shared prefixes trained once) into `--out`; `--grid DIR` reads a finished grid directory instead
(e.g. a 5-seed `stagealign grid ... --out DIR`). Writes bench/results/sample_efficiency.json.

    python bench/sample_efficiency.py                       # weak/boundary/strong, seed 0
    python bench/sample_efficiency.py --grid /tmp/runs/grid5 --tag grid5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import write_result  # noqa: E402


def cell_rows(grid_dir: Path) -> list[dict]:
    from stagealign import artifacts

    manifest = artifacts.read_json(grid_dir / "grid-cells.json")
    rows = []
    for c in manifest["cells"]:
        path = grid_dir / c["dir"] / "summary.json"
        if not path.is_file():
            continue
        s = artifacts.read_json(path)
        its = s["iterations"]
        if not its:
            continue
        metric = its[0]["metric"]
        pairs = sum(int(r["pairs"]) for r in its)
        gain = its[-1]["after"] - s["initial"][metric]["mean"]
        rows.append({"policy": c.get("policy") or c.get("model"), "method": c["method"], "seed": c["seed"],
                     "name": c["name"], "kind": c["kind"], "pairs": pairs, "gain": gain,
                     "final": its[-1]["after"], "initial": s["initial"][metric]["mean"],
                     "gain_per_1k_pairs": gain / pairs * 1000 if pairs else float("nan"),
                     "realised": "-".join({"static": "off", "onpolicy": "on"}.get(r["source"], r["source"])
                                          for r in its),
                     "onpolicy_share": [r["onpolicy_share"] for r in its]})
    return rows


def boundary_time_share(grid_dir: Path) -> dict | None:
    """Wall time of each iteration's boundary measurement over its training time, from the cells'
    stage records (each iteration's measure and train results); shared iterations counted once."""
    from stagealign import artifacts
    from stagealign.grid import MANIFEST
    from stagealign.rundir import RunDir

    shares, tokens, seen = [], [], set()
    for c in artifacts.read_json(grid_dir / MANIFEST)["cells"]:
        run = RunDir(grid_dir / c["dir"])
        for k in run.iterations():
            m, t = run.stage_path(k, "measure"), run.stage_path(k, "train")
            if not (m.is_file() and t.is_file()):
                continue
            mj, tj = artifacts.read_json(m), artifacts.read_json(t)
            if not mj.get("measured", True) or (mj["seconds"], tj["seconds"]) in seen:
                continue
            seen.add((mj["seconds"], tj["seconds"]))
            shares.append(mj["seconds"] / tj["seconds"])
            if mj.get("cost_vs_epoch") is not None:
                tokens.append(mj["cost_vs_epoch"])
    if not shares:
        return None
    return {"iterations": len(shares), "time_share_mean": float(np.mean(shares)),
            "time_share_median": float(np.median(shares)), "time_share_max": float(np.max(shares)),
            "token_passes_share_mean": float(np.mean(tokens)) if tokens else None}


def summarise(rows: list[dict]) -> list[dict]:
    from stagealign.stats import mean_ci

    def est(vals):
        d = mean_ci(vals).to_dict(json_safe=True)
        return {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": len(vals)}

    out = []
    for key in sorted({(r["policy"], r["method"]) for r in rows}):
        rs = [r for r in rows if (r["policy"], r["method"]) == key]
        by_name = {}
        for r in rs:
            by_name.setdefault(r["name"], []).append(r)
        stats = {name: {"gain_per_1k_pairs": est([r["gain_per_1k_pairs"] for r in v]),
                        "final": est([r["final"] for r in v]), "pairs": float(np.mean([r["pairs"] for r in v])),
                        "realised": sorted({r["realised"] for r in v})} for name, v in by_name.items()}
        fixed = {n: s for n, s in stats.items() if n.startswith("path-")}
        if not fixed:
            continue
        best = max(fixed, key=lambda n: fixed[n]["gain_per_1k_pairs"]["mean"])
        worst = min(fixed, key=lambda n: fixed[n]["gain_per_1k_pairs"]["mean"])
        entry = {"policy": key[0], "method": key[1], "initial": float(np.mean([r["initial"] for r in rs])),
                 "cells": stats, "best_fixed": best, "worst_fixed": worst}
        b, w = fixed[best]["gain_per_1k_pairs"]["mean"], fixed[worst]["gain_per_1k_pairs"]["mean"]
        for sched in ("auto", "blend"):
            if sched in stats:
                g = stats[sched]["gain_per_1k_pairs"]["mean"]
                entry[sched] = {"gain_per_1k_pairs": g, "over_best": g / b if b else None,
                                "over_worst": g / w if w else None,
                                # where it lands between worst (0) and best (1)
                                "share_of_best_minus_worst": (g - w) / (b - w) if b != w else None}
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=None, help="read this finished grid directory instead of running one")
    ap.add_argument("--policies", nargs="+", default=["weak", "boundary", "strong"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=["dpo"])
    ap.add_argument("--out", default="runs/bench-sample-efficiency", help="grid directory to run into")
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for the grid run")
    args = ap.parse_args()
    from stagealign.training.common import quiet_libraries

    quiet_libraries()
    t0 = time.time()
    if args.grid:
        grid_dir = Path(args.grid)
    else:
        from stagealign.grid import demo_config_path, load_grid_config, run_grid

        fmt = lambda xs: "[" + ",".join(str(x) for x in xs) + "]"  # noqa: E731
        base, spec = load_grid_config(demo_config_path(), [
            f"grid.policies={fmt(args.policies)}", f"grid.seeds={fmt(args.seeds)}",
            f"grid.methods={fmt(args.methods)}", *args.overrides])
        grid_dir = Path(args.out)
        run_grid(base, spec, grid_dir)
    rows = cell_rows(grid_dir)
    summary = summarise(rows)
    for e in summary:
        line = (f"{e['policy']:9s} {e['method']:7s} best {e['best_fixed']} "
                f"{e['cells'][e['best_fixed']]['gain_per_1k_pairs']['mean']:+.3f}/1k pairs, worst {e['worst_fixed']} "
                f"{e['cells'][e['worst_fixed']]['gain_per_1k_pairs']['mean']:+.3f}")
        for sched in ("auto", "blend"):
            if sched in e:
                line += f", {sched} {e[sched]['gain_per_1k_pairs']:+.3f} ({e[sched]['over_best']:.2f}x best)"
        print(line)
    name = "sample_efficiency" + (f"-{args.tag}" if args.tag else "")
    share = boundary_time_share(grid_dir)
    if share:
        print(f"boundary measurement / training time per iteration: mean {share['time_share_mean']:.1%} "
              f"(median {share['time_share_median']:.1%}, {share['iterations']} iterations)")
    path = write_result(name, {"args": vars(args), "grid_dir": str(grid_dir), "seconds": time.time() - t0,
                               "summary": summary, "boundary_time_share": share, "cells": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

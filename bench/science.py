"""Issue 15's experiments on the coverage world: the kappa sweep (phase diagram) and the rules.

Every value the experiments use is fixed here, before any run (the issue forbids choosing them
after seeing which make a claim hold); the world itself is `src/stagealign/configs/coverage-grid.yaml`.

    python bench/science.py sweep            # kappa x pool x method grids, one iteration from each policy
    python bench/science.py rules            # two-iteration paths + every rule, at the rule kappas
    python bench/science.py report           # bench/results/science-coverage.json, tables, plots

Each grid is an ordinary resumable `stagealign grid` run under runs/science/coverage/ (run them one
at a time: two jobs on 2 cores oversubscribe OpenMP); `--only` picks grids by name substring, and
`report` reads whatever has finished. Intervals are 95% t over training seeds, paired by seed.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

from _meta import RESULTS, write_result

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "src/stagealign/configs/coverage-grid.yaml"
RUNS = ROOT / "runs/science/coverage"

# ---- fixed before any run ------------------------------------------------------------------
KAPPAS = (0.0, 0.5, 1.0, 2.0)  # reward per right knowledge token; 0 = the quality-gap world
POOLS = {"default": False, "length-balanced": True}  # world.pool_length_balanced
POLICIES = ("weak", "boundary", "strong")
SEEDS = (0, 1, 2, 3, 4)  # training seeds (run seeds)
METHODS = ("dpo", "slic-hf")
#: the rules experiment: world 0 and two other world seeds, DPO, the default pool
RULE_WORLDS = (0, 1, 2)
RULE_METHODS = ("dpo",)
RULE_SCHEDULES = ("bs", "bs-hard", "bs-pool", "coverage", "race", "union", "route")
#: a checkpoint is "significant" when its on-minus-static gap exceeds 1.96 standard errors of the
#: two evaluations (grid calibration points); agreement is counted over those.


def rule_kappas(sweep: dict | None) -> list[float]:
    """kappa 0, the crossover if there is one, and the largest kappa.

    The crossover is the smallest swept kappa at which static beats on-policy (mean static minus
    on-policy gain > 0) for some policy with DPO on the default pool; a rule fixed before the sweep.
    """
    out = [KAPPAS[0]]
    rows = [r for r in (sweep or {}).get("rows", []) if r["method"] == "dpo" and r["pool"] == "default"]
    cross = next((k for k in KAPPAS[1:-1] if any(r["kappa"] == k and r["static_minus_on"]["mean"] > 0
                                                  for r in rows)), None)
    if cross is not None:
        out.append(cross)
    return out + [KAPPAS[-1]]


def _stagealign() -> str:
    return str(Path(sys.executable).with_name("stagealign"))


def sweep_grids() -> list[tuple[str, list[str]]]:
    grids = []
    for method in METHODS:
        for pool, balanced in POOLS.items():
            for kappa in KAPPAS:
                name = f"sweep/k{kappa:g}-{pool}-{method}"
                grids.append((name, [f"world.kappa={kappa}", f"world.pool_length_balanced={str(balanced).lower()}",
                                     f"grid.policies=[{','.join(POLICIES)}]", "grid.iterations=1",
                                     "grid.schedules=[]", f"grid.seeds=[{','.join(map(str, SEEDS))}]",
                                     f"grid.methods=[{method}]"]))
    return grids


def rule_grids(sweep: dict | None) -> list[tuple[str, list[str]]]:
    grids = []
    for method in RULE_METHODS:
        for kappa in rule_kappas(sweep):
            for world in RULE_WORLDS:
                name = f"rules/w{world}-k{kappa:g}-{method}"
                grids.append((name, [f"world.seed={world}", f"world.kappa={kappa}",
                                     f"grid.policies=[{','.join(POLICIES)}]", "grid.iterations=2", "grid.paths=all",
                                     f"grid.schedules=[{','.join(RULE_SCHEDULES)}]",
                                     f"grid.seeds=[{','.join(map(str, SEEDS))}]", f"grid.methods=[{method}]"]))
    return grids


def run_grids(grids: list[tuple[str, list[str]]], only: str | None) -> None:
    for name, overrides in grids:
        if only and only not in name:
            continue
        t0 = time.time()
        cmd = [_stagealign(), "grid", str(CONFIG), *overrides, "--out", str(RUNS / name)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
        print(f"[science] {name}: {time.time() - t0:.0f}s", flush=True)


# ---- reading finished grids ------------------------------------------------------------------
def _neg(e: dict | None) -> dict | None:
    if e is None:
        return None
    flip = lambda v: None if v is None else -v  # noqa: E731
    return {**e, "mean": flip(e["mean"]), "lo": flip(e.get("hi")), "hi": flip(e.get("lo"))}


def sweep_rows() -> list[dict]:
    from stagealign.grid import grid_metrics

    rows = []
    for method in METHODS:
        for pool in POOLS:
            for kappa in KAPPAS:
                d = RUNS / f"sweep/k{kappa:g}-{pool}-{method}"
                if not (d / "grid-cells.json").is_file():
                    continue
                m = grid_metrics(d)
                for g in m["groups"]:
                    eff = g["effectiveness"]
                    if eff["diff"] is None:
                        continue
                    rows.append({"method": method, "pool": pool, "kappa": kappa, "policy": g["policy"],
                                 "seeds": eff["paired_seeds"], "bs0": eff["bs0"],
                                 "static_gain": eff["static_gain"], "onpolicy_gain": eff["onpolicy_gain"],
                                 "static_minus_on": _neg(eff["diff"]),
                                 "diagnostics": g.get("diagnostics")})
    return rows


def _fmt(e: dict | None) -> str:
    if not e or e.get("mean") is None:
        return "-"
    ci = "" if e.get("lo") is None else f" [{e['lo']:+.3f}, {e['hi']:+.3f}]"
    return f"{e['mean']:+.3f}{ci}"


def sweep_table(rows: list[dict]) -> str:
    from stagealign.report import markdown_table

    body = [[r["method"], r["pool"], f"{r['kappa']:g}", r["policy"], _fmt(r["bs0"]).lstrip("+"),
             _fmt(r["static_gain"]), _fmt(r["onpolicy_gain"]), _fmt(r["static_minus_on"]),
             "static" if (r["static_minus_on"].get("lo") or -math.inf) > 0 else
             "on-policy" if (r["static_minus_on"].get("hi") or math.inf) < 0 else "-"]
            for r in rows]
    return "\n".join(markdown_table(["method", "pool", "kappa", "policy", "BS", "static gain", "on-policy gain",
                                     "static - on", "better (95%)"], body))


def plot_phase(rows: list[dict], path: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [(m, p) for m in METHODS for p in POOLS if any(r["method"] == m and r["pool"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, (method, pool) in zip(axes[0], panels):
        for i, pol in enumerate(POLICIES):
            rs = sorted((r for r in rows if (r["method"], r["pool"], r["policy"]) == (method, pool, pol)),
                        key=lambda r: r["kappa"])
            if not rs:
                continue
            xs = [r["kappa"] + (i - 1) * 0.03 for r in rs]
            ys = [r["static_minus_on"]["mean"] for r in rs]
            err = [[y - (r["static_minus_on"]["lo"] if r["static_minus_on"]["lo"] is not None else y) for y, r in
                    zip(ys, rs)], [(r["static_minus_on"]["hi"] if r["static_minus_on"]["hi"] is not None else y) - y
                                   for y, r in zip(ys, rs)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=pol)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{method}, {pool} pool")
        ax.set_xlabel("kappa (reward per right knowledge token)")
    axes[0][0].set_ylabel("static gain - on-policy gain\n(one iteration, 95% CI over seeds)")
    axes[0][-1].legend(title="initial policy", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sweep", "rules", "report"])
    ap.add_argument("--only", help="run only grids whose name contains this")
    args = ap.parse_args()
    out = RESULTS / "science-coverage.json"
    if args.what == "sweep":
        run_grids(sweep_grids(), args.only)
    elif args.what == "rules":
        from stagealign import artifacts

        sweep = artifacts.read_json(out) if out.is_file() else None
        if sweep is None:
            raise SystemExit(f"{out} is missing: run `sweep` and `report` first (the crossover kappa comes from it)")
        run_grids(rule_grids(sweep["sweep"]), args.only)
    else:
        rows = sweep_rows()
        plot = plot_phase(rows, RESULTS / "science-coverage" / "phase.png")
        payload = {"fixed": {"kappas": KAPPAS, "pools": POOLS, "policies": POLICIES, "seeds": SEEDS,
                             "methods": METHODS, "rule_worlds": RULE_WORLDS, "rule_methods": RULE_METHODS,
                             "rule_schedules": RULE_SCHEDULES},
                   "sweep": {"rows": rows}}
        payload["rule_kappas"] = rule_kappas(payload["sweep"])
        write_result("science-coverage", payload)
        print(sweep_table(rows))
        print(f"\nrule kappas: {payload['rule_kappas']}; plot: {plot}; written: {out}")


if __name__ == "__main__":
    main()

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


def phase_table(rows: list[dict]) -> str:
    """The phase diagram as numbers: static minus on-policy gain [95% CI] per kappa, one row per
    method x pool x policy, and the initial policy's BS at each kappa."""
    from stagealign.report import markdown_table

    body = []
    for method in METHODS:
        for pool in POOLS:
            for pol in POLICIES:
                rs = {r["kappa"]: r for r in rows if (r["method"], r["pool"], r["policy"]) == (method, pool, pol)}
                if rs:
                    body.append([method, pool, pol, *(_fmt(rs[k]["static_minus_on"]) if k in rs else "-"
                                                      for k in KAPPAS),
                                 " / ".join(f"{rs[k]['bs0']['mean']:.2f}" if k in rs else "-" for k in KAPPAS)])
    return "\n".join(markdown_table(["method", "pool", "policy", *(f"kappa {k:g}" for k in KAPPAS),
                                      "BS at each kappa"], body))


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
        ax.set_xticks(KAPPAS)
        ax.set_title(f"{method}, {pool} pool")
        ax.set_xlabel("kappa (reward per right knowledge token)")
    axes[0][0].set_ylabel("static gain - on-policy gain\n(one iteration, 95% CI over seeds)")
    axes[0][0].legend(title="initial policy", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- the rules experiment -------------------------------------------------------------------
def _cell(grid: Path, policy: str, method: str, seed: int, name: str):
    from stagealign.rundir import RunDir

    return RunDir(grid / policy / method / f"seed{seed}" / name)


_PREV = {"init": None, "off": "static", "on": "onpolicy"}
_PATH_AT = {"init": "path-off-off", "off": "path-off-off", "on": "path-on-on"}  # a cell that measured there


def rule_choice(grid: Path, policy: str, method: str, seed: int, checkpoint: str, rule: str, threshold: float) -> str | None:
    """The source a rule picks at a checkpoint of the path grid (init / off / on), from the
    measurement a path cell recorded there (probe rules) or the race cell's own race (race)."""
    from stagealign.config import ScheduleConfig
    from stagealign.schedule import Choice, next_choice

    k = 1 if checkpoint == "init" else 2
    prev = None if _PREV[checkpoint] is None else Choice(_PREV[checkpoint], float(_PREV[checkpoint] == "onpolicy"))
    if rule == "race":
        run = _cell(grid, policy, method, seed, "race")
        if not run.has(k, "decide") or (k == 2 and run.read_stage(1, "decide")["source"] != _PREV[checkpoint]):
            return None  # the race cell did not pass through this checkpoint
        return run.read_stage(k, "decide")["source"]
    run = _cell(grid, policy, method, seed, _PATH_AT[checkpoint])
    if not run.has(k, "measure"):
        return None
    return next_choice(ScheduleConfig(kind="auto", rule=rule), threshold, k, run.read_stage(k, "measure"), prev).source


def race_cost(grid: Path, policy: str, method: str, seed: int) -> list[dict]:
    """Per iteration of a race cell: the race's extra cost (what it spent that the iteration does
    not keep: the loser's training, the head to head, the race's samples when static won) over the
    iteration's training (the kept copy's plus the continuation's; pairs counted with one
    convention, `race.token_passes`), in wall seconds and in policy token passes."""
    from transformers import AutoTokenizer

    from stagealign.race import token_passes

    run = _cell(grid, policy, method, seed, "race")
    if not run.finished:
        return []
    out = []
    for r in run.read_summary()["iterations"]:
        k = r["iteration"]
        raced = run.read_stage(k, "decide").get("race")
        if not raced or not raced.get("winner"):
            continue
        tok = AutoTokenizer.from_pretrained(run.model(k))
        train = run.read_stage(k, "train")
        kept_train = raced["train_token_passes"][raced["winner"]] if raced["kept"] else 0
        passes = token_passes(tok, list(run.read_rows(k, "pairs.jsonl")), train["epochs"]) + kept_train
        seconds = train["seconds"] + (raced["train_seconds"][raced["winner"]] if raced["kept"] else 0.0)
        out.append({"iteration": k, "seconds_share": raced["extra_seconds"] / seconds,
                    "passes_share": raced["extra_token_passes"] / passes,
                    "race_seconds": raced["seconds"], "extra_seconds": raced["extra_seconds"], "train_seconds": seconds,
                    "stopped": raced["stopped"], "significant": raced["significant"], "winner": raced["winner"]})
    return out


def rules_rows() -> list[dict]:
    """One row per (world, kappa, policy, rule): regret (and its share of the best path's gain),
    agreement with the better next source at the checkpoints, and for race its cost."""
    from stagealign.grid import grid_metrics

    rows = []
    for d in sorted((RUNS / "rules").glob("w*-k*-*")):
        if not (d / "grid-cells.json").is_file():
            continue
        world, kappa, method = d.name.split("-", 2)
        m = grid_metrics(d)
        for g in m["groups"]:
            pts = g["calibration"]
            off_off = g["cells"].get("path-off-off")
            for rule in RULE_SCHEDULES:
                a = g["adaptive"].get(rule)
                if a is None:
                    continue
                agree = []
                if rule not in ("union", "route"):
                    for p in pts:
                        src = rule_choice(d, g["policy"], g["method"], p["seed"], p["checkpoint"], rule, m["threshold"])
                        if src is not None:
                            agree.append({"checkpoint": p["checkpoint"], "seed": p["seed"], "significant": p["significant"],
                                          "agree": (src == "onpolicy") == (p["diff"] > 0)})
                rows.append({
                    "world": int(world[1:]), "kappa": float(kappa[1:]), "method": g["method"], "policy": g["policy"],
                    "rule": rule, "best_path": (g["best_path"] or {}).get("name"), "realised": a["realised"],
                    "regret": a.get("regret"), "regret_share": a.get("regret_share"),
                    "chose_best_share": a.get("chose_best_share"), "agreement": agree,
                    "bs0": g["effectiveness"]["bs0"],
                    "bs_after_static": off_off["bs"][1] if off_off and len(off_off["bs"]) > 1 else None,
                    "cost": [c for s in g["seeds"] for c in race_cost(d, g["policy"], g["method"], s)]
                    if rule == "race" else None,
                })
    return rows


def rules_summary(rows: list[dict]) -> list[dict]:
    """Per rule, pooled over worlds, kappas and policies: agreement at significant checkpoints
    (Wilson 95%), regret share per cell (the goal: <= 15% in every cell), and race's cost."""
    from stagealign.stats import proportion_ci

    out = []
    for rule in RULE_SCHEDULES:
        rs = [r for r in rows if r["rule"] == rule]
        if not rs:
            continue
        sig = [float(x["agree"]) for r in rs for x in r["agreement"] if x["significant"]]
        shares = [r["regret_share"] for r in rs if r["regret_share"] is not None]
        cost = [c for r in rs for c in (r["cost"] or [])]
        out.append({
            "rule": rule, "cells": len(rs),
            "agree_significant": proportion_ci(sig).to_dict(json_safe=True) if sig else None,
            "significant_points": len(sig),
            "regret_share_max": max(shares) if shares else None,
            "regret_share_mean": sum(shares) / len(shares) if shares else None,
            "cells_within_15pct": sum(x <= 0.15 for x in shares), "cells_with_share": len(shares),
            "cost_seconds_share": sum(c["seconds_share"] for c in cost) / len(cost) if cost else None,
            "cost_passes_share": sum(c["passes_share"] for c in cost) / len(cost) if cost else None,
        })
    return out


def rules_table(summary: list[dict]) -> str:
    from stagealign.report import markdown_table

    def pct(x):
        return "-" if x is None else f"{x:.0%}"

    body = []
    for s in summary:
        a = s["agree_significant"]
        agree = "-" if a is None else f"{a['mean']:.0%} [{a['lo']:.0%}, {a['hi']:.0%}] of {s['significant_points']}"
        body.append([s["rule"], agree, pct(s["regret_share_mean"]), pct(s["regret_share_max"]),
                     f"{s['cells_within_15pct']}/{s['cells_with_share']}", pct(s["cost_seconds_share"]),
                     pct(s["cost_passes_share"])])
    return "\n".join(markdown_table(["rule", "agreement at significant checkpoints", "regret / best gain (mean)",
                                      "(worst cell)", "cells <= 15%", "extra wall time", "extra token passes"], body))


def rules_cell_table(rows: list[dict]) -> str:
    """Per world x kappa x policy: the best fixed path, BS before and after a static iteration, and
    each rule's regret as a share of the best path's gain (with the paths it took over the seeds)."""
    from stagealign.report import markdown_table

    cells: dict[tuple, dict] = {}
    for r in rows:
        c = cells.setdefault((r["world"], r["kappa"], r["policy"]), {"best": r["best_path"], "bs0": r["bs0"],
                                                                       "bs1": r["bs_after_static"]})
        share = "-" if r["regret_share"] is None else f"{r['regret_share']:.0%}"
        c[r["rule"]] = f"{share} ({', '.join(sorted(set(r['realised'])))})"
    body = [[w, f"{k:g}", pol, c["best"].replace("path-", ""),
             f"{c['bs0']['mean']:.2f} -> " + ("-" if c["bs1"] is None else f"{c['bs1']['mean']:.2f}"),
             *(c.get(rule, "-") for rule in RULE_SCHEDULES)] for (w, k, pol), c in sorted(cells.items())]
    return "\n".join(markdown_table(["world", "kappa", "policy", "best path", "BS, after off", *RULE_SCHEDULES], body))


def plot_rules(rows: list[dict], path: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    kappas = sorted({r["kappa"] for r in rows})
    TOP = 2.0  # noqa: N806  (the y axis' top: regret twice the best path's gain)
    fig, axes = plt.subplots(1, len(POLICIES), figsize=(4.6 * len(POLICIES), 3.8), squeeze=False, sharey=True)
    width = 0.8 / len(RULE_SCHEDULES)
    for ax, pol in zip(axes[0], POLICIES):
        for i, rule in enumerate(RULE_SCHEDULES):
            ys = []
            for k in kappas:
                v = [r["regret_share"] for r in rows if (r["policy"], r["rule"], r["kappa"]) == (pol, rule, k)
                     and r["regret_share"] is not None]
                ys.append(sum(v) / len(v) if v else float("nan"))
            xs = [j + (i - len(RULE_SCHEDULES) / 2 + 0.5) * width for j in range(len(kappas))]
            ax.bar(xs, [min(y, TOP) for y in ys], width, label=rule)
            for x, y in zip(xs, ys):
                if y > TOP:  # a collapse would flatten every other bar: clip it and print its value
                    ax.annotate(f"{y:.1f}", (x, TOP), ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_ylim(min(-0.2, ax.get_ylim()[0]), TOP * 1.15)
        ax.axhline(0.15, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(kappas)), [f"kappa {k:g}" for k in kappas])
        ax.set_title(pol)
    axes[0][0].set_ylabel("regret / best path's gain\n(mean over worlds; dashed: the 15% goal)")
    axes[0][-1].legend(fontsize=7)
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
        rrows = rules_rows()
        rsum = rules_summary(rrows)
        rplot = plot_rules(rrows, RESULTS / "science-coverage" / "rules.png")
        payload = {"fixed": {"kappas": KAPPAS, "pools": POOLS, "policies": POLICIES, "seeds": SEEDS,
                             "methods": METHODS, "rule_worlds": RULE_WORLDS, "rule_methods": RULE_METHODS,
                             "rule_schedules": RULE_SCHEDULES},
                   "sweep": {"rows": rows}, "rules": {"rows": rrows, "summary": rsum}}
        payload["rule_kappas"] = rule_kappas(payload["sweep"])
        write_result("science-coverage", payload)
        print(sweep_table(rows) + "\n\n" + phase_table(rows))
        if rsum:
            print("\n" + rules_cell_table(rrows) + "\n\n" + rules_table(rsum))
        print(f"\nrule kappas: {payload['rule_kappas']}; plots: {plot}, {rplot}; written: {out}")


if __name__ == "__main__":
    main()

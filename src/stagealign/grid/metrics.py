"""A grid's numbers: gains per path and iteration, on/off effectiveness, best path, the adaptive
schedules' choices and regret, boundary-score calibration, candidate diagnostics, and what the
run's plugin says about each checkpoint's evaluation answers (`Plugin.decompose`; the synthetic
world: knowledge-token rate, utility per word, length, repeats, its reward's parts).

`grid_metrics` reads the cells' summaries and artifacts (never the models) and writes OUT/grid.json
with 95% intervals over seeds; `stagealign.report` renders it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stagealign import artifacts, plugins
from stagealign.config import ConfigError
from stagealign.headline import headline
from stagealign.grid.spec import MANIFEST, METRICS, GridError, path_name
from stagealign.rundir import RunDir
from stagealign.schedule import ADAPTIVE, PURE, path_text, short


def _est(values: list[float], level: float = 0.95) -> dict | None:
    from stagealign.stats import mean_ci

    if not values:
        return None
    d = mean_ci(values, level).to_dict(json_safe=True)
    return {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": d["n_clusters"], "values": list(values)}


def _estimate(e, values=None) -> dict:
    d = e.to_dict(json_safe=True)
    out = {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": d["n_clusters"]}
    if values is not None:
        out["values"] = values
    return out


def _load_cells(out: Path) -> list[dict]:
    path = out / MANIFEST
    if not path.is_file():
        raise GridError(f"{out}: not a grid directory (no {MANIFEST}); run `stagealign grid` first")
    cells = []
    for c in artifacts.read_json(path)["cells"]:
        run = RunDir(out / c["dir"])
        if not run.summary_path.is_file():
            continue
        c = dict(c)
        c["run"] = run
        c["summary"] = run.read_summary()
        rows = c["summary"]["iterations"]
        c["sources"] = [r["source"] for r in rows]
        c["shares"] = [r["onpolicy_share"] for r in rows]
        c["pure"] = []
        for r in rows:
            if r["source"] not in PURE:
                break
            c["pure"].append(r["source"])
        cells.append(c)
    return cells


def _trajectory(c: dict) -> tuple[list[float], list[float], list[float | None], list[dict]]:
    s = c["summary"]
    rows = s["iterations"]
    metric = rows[0]["metric"] if rows else headline(s["initial"])[0]
    reward = [s["initial"][metric]["mean"]] + [r["after"] for r in rows]
    gain = [r["after"] - r["before"] for r in rows]
    bs = [r["bs"] for r in rows]
    return reward, gain, bs, rows


def grid_metrics(out_dir: str | Path, write: bool = True, level: float = 0.95) -> dict[str, Any]:
    """Metrics of a grid directory, per (policy, method), written to OUT/grid.json.

    Rewards are the ground truth when the world knows it, else the judge's score (`metric`).
    Intervals are 95% over seeds (t for means and differences, paired bootstrap for the ratio);
    with one seed they are unbounded and stored as null.
    """
    from stagealign.stats import diff_ci, ratio_ci

    out = Path(out_dir)
    cells = _load_cells(out)
    if not cells:
        raise GridError(f"{out}: no finished grid cells yet")
    first = cells[0]["summary"]
    metric = first["iterations"][0]["metric"] if first["iterations"] else "reward"
    threshold = artifacts.read_json(out / MANIFEST)["base_config"]["boundary"]["threshold"]
    groups = []
    columns: list[str] | None = None  # the plugin's compact columns of the decompositions, when any
    keys = list(dict.fromkeys((c["policy"], c["method"]) for c in cells))
    for policy, method in keys:
        gc = [c for c in cells if (c["policy"], c["method"]) == (policy, method)]
        seeds = sorted({c["seed"] for c in gc})
        names = list(dict.fromkeys(c["name"] for c in gc))
        per_cell: dict[str, Any] = {}
        traj: dict[str, dict[int, tuple]] = {}
        chosen: dict[str, dict[int, str]] = {}  # cell -> seed -> the path it took, as a path cell's name
        for name in names:
            cs = {c["seed"]: c for c in gc if c["name"] == name}
            t = {s: _trajectory(c) for s, c in cs.items()}
            traj[name] = t
            chosen[name] = {s: path_name(c["sources"]) for s, c in cs.items()}
            k = len(next(iter(t.values()))[1])
            ss = sorted(t)
            decomposition, cols = _decomposition_est(cs, k, level)
            columns = columns or cols
            per_cell[name] = {
                "kind": next(iter(cs.values()))["kind"],
                "rule": next(iter(cs.values())).get("rule"),
                "path": next(iter(cs.values()))["path"],
                "seeds": ss,
                "realised": [path_text([short(x, sh) for x, sh in zip(cs[s]["sources"], cs[s]["shares"])])
                             for s in ss],
                "onpolicy_share": [[float(x) for x in cs[s]["shares"]] for s in ss],
                "reward": [_est([t[s][0][i] for s in ss], level) for i in range(k + 1)],
                "gain": [_est([t[s][1][i] for s in ss], level) for i in range(k)],
                "bs": [_est([t[s][2][i] for s in ss if t[s][2][i] is not None], level) for i in range(k)],
                "final": _est([t[s][0][k] for s in ss], level),
                "decomposition": decomposition,
            }
        # one-iteration effectiveness: first-iteration gain of each source, paired by seed
        first_gain: dict[str, dict[int, float]] = {"static": {}, "onpolicy": {}}
        bs0: dict[int, float] = {}
        for c in gc:
            if c["pure"]:
                first_gain[c["pure"][0]].setdefault(c["seed"], c["summary"]["iterations"][0]["after"]
                                                    - c["summary"]["iterations"][0]["before"])
            b = c["summary"]["iterations"][0]["bs"] if c["summary"]["iterations"] else None
            if b is not None:
                bs0.setdefault(c["seed"], b)
        paired = sorted(set(first_gain["static"]) & set(first_gain["onpolicy"]))
        eff: dict[str, Any] = {
            "static_gain": _est([first_gain["static"][s] for s in sorted(first_gain["static"])], level),
            "onpolicy_gain": _est([first_gain["onpolicy"][s] for s in sorted(first_gain["onpolicy"])], level),
            "bs0": _est([bs0[s] for s in sorted(bs0)], level),
            "ratio": None, "diff": None, "paired_seeds": paired,
        }
        if paired:
            on = [first_gain["onpolicy"][s] for s in paired]
            off = [first_gain["static"][s] for s in paired]
            eff["ratio"] = _estimate(ratio_ci(on, off, level=level, rng=0))
            eff["diff"] = _estimate(diff_ci(on, off, level=level), [a - b for a, b in zip(on, off)])
        # best explicit path (by mean final reward), auto's choice and regret, blend
        path_names = [n for n in names if per_cell[n]["kind"] == "path"]
        best = max(path_names, key=lambda n: per_cell[n]["final"]["mean"]) if path_names else None
        best_d = {"name": best, "final": per_cell[best]["final"]} if best else None
        adaptive = {}
        for kind in (n for n in names if n not in path_names):  # the schedules and rules run next to the paths
            pc = per_cell[kind]
            d: dict[str, Any] = {"realised": pc["realised"], "final": pc["final"],
                                 "onpolicy_share": [sum(x[i] for x in pc["onpolicy_share"]) / len(pc["onpolicy_share"])
                                                    for i in range(len(pc["onpolicy_share"][0]))]}
            if best:
                bt, at = traj[best], traj[kind]
                common = [s for s in sorted(at) if s in bt]
                d["chose_best"] = [chosen[kind][s] == best for s in common]
                d["chose_best_share"] = sum(d["chose_best"]) / len(common) if common else None
                d["regret"] = _est([bt[s][0][-1] - at[s][0][-1] for s in common], level)
                # regret as a share of what the best path gained over the initial policy (issue 15's goal)
                best_gain = sum(bt[s][0][-1] - bt[s][0][0] for s in common) / len(common) if common else 0.0
                d["regret_share"] = d["regret"]["mean"] / best_gain if common and best_gain > 0 else None
            adaptive[kind] = d
        groups.append({
            "policy": policy, "method": method, "seeds": seeds, "order": names, "cells": per_cell,
            "effectiveness": eff,
            "best_path": best_d, "adaptive": adaptive,
            "calibration": _calibration(gc, threshold),
            "diagnostics": _diagnostics(gc),
        })
    points = [p for g in groups for p in g["calibration"]]
    result = {
        "grid_dir": str(out), "metric": metric, "threshold": threshold, "level": level,
        "groups": groups, "decomposition_columns": columns,
        "calibration_summary": calibration_summary(points, threshold),
    }
    if write:
        artifacts.write_json(out / METRICS, result)
    return result


def _calibration(gc: list[dict], threshold: float) -> list[dict]:
    """BS at a checkpoint vs (on-policy gain - static gain) of the next iteration, where both exist."""
    by: dict[tuple, dict] = {}
    for c in gc:
        rows = c["summary"]["iterations"]
        for j, src in enumerate(c["pure"]):
            key = (c["seed"], tuple(c["pure"][:j]))
            r = rows[j]
            entry = by.setdefault(key, {})
            entry.setdefault(src, r)
    points = []
    for (seed, prefix), e in sorted(by.items(), key=lambda kv: (kv[0][0], len(kv[0][1]),
                                                               [x != "static" for x in kv[0][1]])):
        if "static" not in e or "onpolicy" not in e or e["onpolicy"]["bs"] is None:
            continue
        on, off = e["onpolicy"], e["static"]
        g_on, g_off = on["after"] - on["before"], off["after"] - off["before"]
        diff = g_on - g_off
        # both continuations start from the same checkpoint, so diff = after_on - after_off; its
        # standard error from the two evaluations' prompt-clustered intervals (95%, normal)
        se = math.hypot(*((r["after_hi"] - r["after_lo"]) / (2 * 1.959964) if r.get("after_hi") is not None
                          and r.get("after_lo") is not None else math.inf for r in (on, off)))
        points.append({"seed": seed, "checkpoint": path_text(list(prefix)), "iteration": len(prefix) + 1,
                       "bs": on["bs"], "bs_lo": on["bs_lo"], "bs_hi": on["bs_hi"], "decision": on["decision"],
                       "static_gain": g_off, "onpolicy_gain": g_on, "diff": diff,
                       "significant": bool(abs(diff) > 1.959964 * se),
                       "agree": bool((on["bs"] >= threshold) == (diff > 0))})
    return points


def calibration_summary(points: list[dict], threshold: float) -> dict[str, Any]:
    """How often the BS decision picks the source that gained more next, and which threshold would.

    Agreement is a share of checkpoints with a Wilson 95% interval (checkpoints of one seed are
    not independent across iterations, so read it as descriptive); checkpoints whose gap is
    significant are counted apart. The best threshold maximises agreement of "on-policy iff
    BS >= t" over midpoints between observed scores (ties: the one closest to `threshold`);
    t = 0 means "always on-policy", t = 1 "always static".
    """
    from stagealign.stats import proportion_ci

    if not points:
        return {"points": 0, "agree": None}
    agree = [float(p["agree"]) for p in points]
    sig = [p for p in points if p.get("significant")]
    bs = sorted({p["bs"] for p in points})
    candidates = [0.0, 1.0] + [(a + b) / 2 for a, b in zip(bs, bs[1:])] + [threshold]

    def acc(t: float, pts: list[dict]) -> float:
        return sum((p["bs"] >= t) == (p["diff"] > 0) for p in pts) / len(pts)

    best = max(candidates, key=lambda t: (acc(t, points), -abs(t - threshold)))
    return {
        "points": len(points), "agree": sum(agree) / len(agree),
        "agree_ci": proportion_ci(agree).to_dict(json_safe=True),
        "significant_points": len(sig),
        "agree_significant": acc(threshold, sig) if sig else None,
        "onpolicy_better_share": sum(p["diff"] > 0 for p in points) / len(points),
        "best_threshold": best, "best_threshold_agree": acc(best, points),
        "best_threshold_agree_significant": acc(best, sig) if sig else None,
    }


def _depth(checkpoint: str) -> int:
    return 0 if checkpoint == "init" else checkpoint.count("-") + 1


def _diagnostics(gc: list[dict]) -> list[dict]:
    """Diversity vs quality of the static pool and of on-policy candidates per checkpoint."""
    from stagealign.data.diagnostics import diagnose_pairs, diagnose_sets

    found: dict[tuple, list[tuple[tuple[RunDir, int], int]]] = {}
    seen: set[tuple] = set()
    for c in sorted(gc, key=lambda c: c["seed"]):
        for j, src in enumerate(c["pure"]):
            key = ("static", "pool") if src == "static" else ("onpolicy", path_text(c["pure"][:j]))
            if (key, c["seed"]) in seen or (key == ("static", "pool") and key in found):
                continue
            run, k = c["run"], j + 1
            if run.file(k, "candidates.jsonl").is_file() and run.file(k, "pairs.jsonl").is_file():
                seen.add((key, c["seed"]))
                found.setdefault(key, []).append(((run, k), c["seed"]))
    rows = []
    for (origin, checkpoint), dirs in sorted(found.items(), key=lambda kv: (kv[0][0] != "static",
                                                                           _depth(kv[0][1]), kv[0][1])):
        sets = [r for (run, k), _ in dirs for r in run.read_rows(k, "candidates.jsonl") if r["origin"] == origin]
        pairs = [r for (run, k), _ in dirs for r in run.read_rows(k, "pairs.jsonl") if r["origin"] == origin]
        ds = diagnose_sets(sets)
        dp = diagnose_pairs(pairs)

        def m(d, key):
            v = d.get(key)
            return None if v is None else v.get("mean")

        rows.append({
            "origin": origin, "checkpoint": checkpoint,
            "label": "static pool" if origin == "static" else f"on-policy @ {checkpoint}",
            "seeds": sorted({s for _, s in dirs}), "sets": ds["n_sets"], "candidates": ds["n_candidates"],
            "mean_length": ds["mean_length"],
            "distinct_1": m(ds, "distinct_1"), "distinct_2": m(ds, "distinct_2"),
            "ngram_diversity": m(ds, "ngram_diversity"), "edit_diversity": m(ds, "edit_diversity"),
            "quality_mean": m(ds, "quality_mean"), "quality_max": m(ds, "quality_max"),
            "quality_spread": m(ds, "quality_spread"),
            "quality_mean_ci95": (ds.get("quality_mean") or {}).get("ci95"),
            "pairs": dp["n_pairs"], "margin": m(dp, "margin"), "pair_edit_distance": m(dp, "edit_distance"),
            "length_diff": m(dp, "length_diff"),
        })
    return rows


# ---------------------------------------------------------------------- answers' decomposition
EVAL_ANSWERS = "eval_answers.jsonl"


def run_decomposer(run: RunDir, strict: bool = False):
    """How the plugin providing a run decomposes a checkpoint's evaluation answers: ``(at,
    columns)`` with ``at(k)`` the statistics of iteration k's eval_answers.jsonl (None when that
    file is missing) and ``columns`` the plugin's compact ones; None when the run's config is
    missing or no plugin decomposes its answers (a Hugging Face run). ``strict``: a missing or
    unreadable config raises instead (`world show --checkpoint`); the grid skips such cells."""
    from stagealign.config import load_config

    if not run.config_path.is_file():
        if strict:
            raise ConfigError(f"{run.root}: not a run directory (no {run.config_path.name})")
        return None
    try:
        cfg = load_config(run.config_path)
    except ConfigError:
        if strict:
            raise
        return None  # a config this version no longer reads: no decomposition, the rest of the metrics stand
    plugin = plugins.of_run(cfg)
    if plugin is None or plugin.decompose is None:
        return None

    def at(k: int) -> dict[str, Any] | None:
        if not run.file(k, EVAL_ANSWERS).is_file():
            return None
        return plugin.decompose(cfg, [(r["prompt_id"], a) for r in run.read_rows(k, EVAL_ANSWERS)
                                      for a in r["answers"]])

    return at, list(plugin.decompose_columns)


def checkpoint_decomposition(run_dir: str | Path, iteration: int | None = None) -> tuple[int, dict[str, Any]]:
    """(iteration, statistics) of a run's checkpoint's evaluation answers, by its plugin
    (`stagealign world show --checkpoint`); default: the last iteration whose evaluation finished.
    Errors name the path."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"{run.root}: no such run directory")
    found = run_decomposer(run, strict=True)
    if found is None:
        raise ConfigError(f"{run.root}: no installed plugin decomposes this run's answers "
                          "(a Hugging Face run has no world to decompose them in)")
    at, _ = found
    if iteration is None:
        done = [k for k in run.iterations() if run.has(k, "evaluate") and run.file(k, EVAL_ANSWERS).is_file()]
        if not done:
            raise ConfigError(f"{run.root}: no iteration has a finished evaluation yet "
                              f"(no iter_<k>/{EVAL_ANSWERS} recorded)")
        iteration = done[-1]
    stats = at(iteration)
    if stats is None:
        raise ConfigError(f"{run.file(iteration, EVAL_ANSWERS)}: missing; iteration {iteration} of this run has "
                          f"no evaluation answers (iterations present: {run.iterations() or 'none'})")
    return iteration, stats


def _decomposition_est(cs: dict[int, dict], k: int, level: float) -> tuple[list[dict | None] | None,
                                                                          list[str] | None]:
    """A cell's checkpoints 0..k: each statistic of its evaluation answers with mean and interval
    over seeds (None at a checkpoint no seed has answers of), and the plugin's compact columns;
    (None, None) when no seed's run has a decomposition (no plugin offers one: Hugging Face runs)."""
    per_seed, columns = [], None
    for _, c in sorted(cs.items()):
        found = run_decomposer(c["run"])
        if found is not None:
            at, columns = found
            per_seed.append([at(i) for i in range(len(c["summary"]["iterations"]) + 1)])
    if not per_seed:
        return None, None
    out: list[dict | None] = []
    for i in range(k + 1):
        at_i = [d[i] for d in per_seed if i < len(d) and d[i] is not None]
        if not at_i:
            out.append(None)
            continue
        names = list(dict.fromkeys(key for d in at_i for key in d))
        out.append({key: _est([d[key] for d in at_i if d.get(key) is not None], level) for key in names})
    return out, columns

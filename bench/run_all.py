"""`make bench`: every benchmark at a size that fits about 20 minutes on 2 CPU cores, then the
Performance table (Markdown) from the result files.

Each script runs in its own process, one after the other (so they do not share the cores) and
writes its JSON to bench/results/; this script adds bench/results/run_all.json (wall time of
every step) and prints the table that README's Performance section shows. Research-size runs of
the same scripts are in bench/README.md; the boundary-cost step writes `boundary_cost-quick.json`
so the 27-case research result (`boundary_cost.json`) is kept.

    python bench/run_all.py                # everything (make bench)
    python bench/run_all.py --only judging scaling
    python bench/run_all.py --table        # only print the table from the existing results
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _meta import RESULTS, write_result  # noqa: E402

WORK = Path("runs/bench")  # checkpoints and grid cells of this run (removed first: timings from scratch)

STEPS: dict[str, list[str]] = {
    "train_throughput": ["train_throughput.py", "--pairs", "1024", "--repeats", "3"],
    "sampling": ["sampling.py", "--prompts", "128", "--n", "4", "--repeats", "3"],
    "judging": ["judging.py", "--repeats", "3"],
    "boundary_cost": ["boundary_cost.py", "--seeds", "0", "--policies", "weak", "boundary", "strong",
                      "--out", str(WORK / "boundary"), "--result", str(RESULTS / "boundary_cost-quick.json")],
    "sample_efficiency": ["sample_efficiency.py", "--policies", "weak", "boundary", "strong", "--seeds", "0",
                          "--out", str(WORK / "sample-efficiency")],
    "scaling": ["scaling.py", "--sizes", "64", "128", "256", "--size-prompts", "256", "--prompts", "256", "512",
                "1024"],
}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _yes(ok) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def table() -> str:
    """The Performance table: one row per quantity, from whatever result files exist."""
    rows = []
    t = _load("train_throughput")
    if t and "ours" in t["median"] and "trl" in t["median"]:
        m, r = t["median"], t["ratios"]
        rows.append(["training: preference pairs/s (1 DPO iteration, 1,024 pairs)",
                     f"{m['ours']['pairs_per_second']:.0f}", f"{m['trl']['pairs_per_second']:.0f} (TRL defaults)",
                     f"{r['trl']['pairs_per_second_ours_over_base']:.2f}x"
                     + (f" (CPU time {r['trl']['pairs_per_cpu_second_ours_over_base']:.2f}x)"
                        if "pairs_per_cpu_second_ours_over_base" in r["trl"] else ""), ">= 1.3x",
                     _yes(r["trl"]["pairs_per_second_ours_over_base"] >= 1.3)])
        if "trl-batch32" in m:
            rows.append(["training: pairs/s vs TRL defaults with our batch size (32)",
                         f"{m['ours']['pairs_per_second']:.0f}", f"{m['trl-batch32']['pairs_per_second']:.0f}",
                         f"{r['trl-batch32']['pairs_per_second_ours_over_base']:.2f}x"
                         + (f" (CPU time {r['trl-batch32']['pairs_per_cpu_second_ours_over_base']:.2f}x)"
                            if "pairs_per_cpu_second_ours_over_base" in r["trl-batch32"] else ""), "-", "-"])
        if "ours-trl-tokenize" in m:
            o, p = m["ours"], m["ours-trl-tokenize"]
            rows.append(["training: set-up seconds (tokenisation + reference pass), batched tokenisation vs "
                         "TRL's per-row map (ours before)", f"{o['setup_seconds']:.2f} s", f"{p['setup_seconds']:.2f} s",
                         f"{p['setup_seconds'] / o['setup_seconds']:.2f}x less; whole iteration "
                         f"{r['ours-trl-tokenize']['pairs_per_second_ours_over_base']:.2f}x", "-", "-"])
        dc = r.get("dtype_check")
        if dc:
            rows.append([f"training: pairs/s of a {dc['params'] / 1e6:.1f}M-parameter model, dtype chosen for this CPU "
                         f"({'bf16 autocast' if dc['bf16_used'] else 'float32'}) vs float32",
                         f"{m['ours-15m']['pairs_per_second']:.0f}", f"{m['ours-15m-fp32']['pairs_per_second']:.0f}",
                         f"{dc['pairs_per_second_auto_over_fp32']:.2f}x (CPU time "
                         f"{dc['pairs_per_cpu_second_auto_over_fp32']:.2f}x)", "-", "-"])
        rows.append(["training: peak RSS, MiB (growth over start)",
                     f"{m['ours']['peak_rss_mb']:.0f} (+{m['ours']['peak_rss_over_start_mb']:.0f})",
                     f"{m['trl']['peak_rss_mb']:.0f} (+{m['trl']['peak_rss_over_start_mb']:.0f})",
                     f"{r['trl']['peak_rss_base_over_ours']:.2f}x less", "-", "-"])
    s = _load("sampling")
    if s:
        a = s["answers_per_second"]
        rows.append([f"on-policy sampling: answers/s ({s['args']['prompts']} prompts x {s['args']['n']})",
                     f"{a['batched']:.0f}", f"{a['one_at_a_time']:.0f} (one prompt per generate)",
                     f"{s['speedup_batched_over_one_at_a_time']:.1f}x", ">= 3x",
                     _yes(s["speedup_batched_over_one_at_a_time"] >= 3)])
    j = _load("judging")
    if j and "reward_model" in j["summary"]:
        e = j["summary"]["reward_model"]
        o, n = e["ours"], e["naive"]
        rows.append(["judging (tiny HF reward model): boundary comparisons/s", f"{o['boundary_comparisons_per_second']:.0f}",
                     f"{n['boundary_comparisons_per_second']:.0f} (no cache, one call per prompt)",
                     f"{o['boundary_comparisons_per_second'] / n['boundary_comparisons_per_second']:.2f}x", "-", "-"])
        rows.append(["judging (tiny HF reward model): pair building, candidates scored/s",
                     f"{o['pairs_comparisons_per_second']:.0f}", f"{n['pairs_comparisons_per_second']:.0f} (no cache)",
                     f"{o['pairs_comparisons_per_second'] / n['pairs_comparisons_per_second']:.2f}x", "-", "-"])
    if j:
        e = j["summary"][next(iter(j["summary"]))]
        rows.append(["judging: judge evaluations in 2 iterations (max scorings of one static answer)",
                     f"{e['ours']['evaluations']:,} ({e['ours']['max_scorings_per_static_answer']}x)",
                     f"{e['no_cache']['evaluations']:,} ({e['no_cache']['max_scorings_per_static_answer']}x), no cache",
                     f"{e['no_cache']['evaluations'] / e['ours']['evaluations']:.2f}x fewer",
                     "static answer scored once", _yes(e["ours"]["max_scorings_per_static_answer"] == 1)])
    for name in ("boundary_cost-quick", "boundary_cost"):
        b = _load(name)
        if not b:
            continue
        sm = b["summary"]
        rows.append([f"boundary score cost / one training epoch on 8,192 prompts, policy token passes "
                     f"({name}: {sm['cases']} cases, decisions agree {sm['agreement']['mean']:.0%})",
                     f"{sm['sequential_cost_vs_epoch']:.2%} (sequential)",
                     f"{sm['fixed_cost_vs_epoch']:.2%} (fixed {b['args']['probe']:,} prompts); paper 3.2%",
                     f"{sm['fixed_cost_vs_epoch'] / sm['sequential_cost_vs_epoch']:.1f}x less", "<= 1%",
                     _yes(sm["sequential_cost_vs_epoch"] <= 0.01)])
        if "sequential_seconds_vs_epoch" in sm:
            rows.append([f"boundary score cost / one training epoch, wall time ({name}; epoch "
                         f"{sm['epoch']['pairs']:,} pairs in {sm['epoch']['seconds']:.0f} s)",
                         f"{sm['sequential_seconds_vs_epoch']:.2%} (sequential)",
                         f"{sm['fixed_seconds_vs_epoch']:.2%} (fixed {b['args']['probe']:,} prompts)",
                         f"{sm['fixed_seconds_vs_epoch'] / sm['sequential_seconds_vs_epoch']:.1f}x less", "<= 1%",
                         _yes(sm["sequential_seconds_vs_epoch"] <= 0.01)])
    for name in ("sample_efficiency", "sample_efficiency-grid5"):
        se = _load(name)
        if not se:
            continue
        seeds = max((c["gain_per_1k_pairs"]["n"] for e in se["summary"] for c in e["cells"].values()), default=0)
        for e in se["summary"]:
            best, worst = e["cells"][e["best_fixed"]], e["cells"][e["worst_fixed"]]
            scheds = [k for k in ("auto", "blend") if k in e]
            rows.append([f"sample efficiency: reward gain per 1,000 pairs, {e['policy']} ({seeds} seed"
                         f"{'s' if seeds > 1 else ''}, {name})",
                         ", ".join(f"{k} {e[k]['gain_per_1k_pairs']:+.3f}" for k in scheds),
                         f"best {e['best_fixed'].removeprefix('path-')} {best['gain_per_1k_pairs']['mean']:+.3f}, "
                         f"worst {e['worst_fixed'].removeprefix('path-')} {worst['gain_per_1k_pairs']['mean']:+.3f}",
                         ", ".join(f"{k}/best {e[k]['over_best']:.2f}" for k in scheds if e[k]["over_best"] is not None),
                         "-", "-"])
    for name in ("sample_efficiency", "sample_efficiency-grid5"):
        se = _load(name)
        sh = se and se.get("boundary_time_share")
        if sh:
            rows.append([f"boundary score, wall time per iteration / training time ({name}, default scale: "
                         f"256-prompt cap, 1,024-pair epoch; {sh['iterations']} iterations)",
                         f"{sh['time_share_mean']:.1%} (median {sh['time_share_median']:.1%})",
                         f"token passes {sh['token_passes_share_mean']:.2%}" if sh["token_passes_share_mean"]
                         is not None else "-", "-", "-", "-"])
            break
    sc = _load("scaling")
    if sc:
        for key, label in (("model_size", "parameters"), ("prompts", "prompts")):
            g, pts = sc[key]["growth"], sc[key]["points"]
            xs = ", ".join(f"{p['params']:,}" if key == "model_size" else str(p["prompts"]) for p in pts)
            ts = ", ".join(f"{p['seconds']['total']:.1f}" for p in pts)
            ms = ", ".join(f"{p['peak_rss_mb']:.0f}" for p in pts)
            rows.append([f"scaling: one on-policy iteration vs {label} ({xs})", f"{ts} s; peak RSS {ms} MiB",
                         "-", f"time ~ {label}^{g['time_total_slope']:.2f} (gen {g['time_generation_slope']:.2f}, "
                              f"judge {g['time_judging_slope']:.2f}, train {g['time_training_slope']:.2f}); "
                              f"RSS ~ ^{g['peak_rss_slope']:.2f}", "-", "-"])
    mr = _load("memory_real")  # not in make bench (about 2 minutes): python bench/memory_real.py
    if mr:
        before = next(c for c in mr["cases"] if c["method"] == "before")
        after = next(c for c in mr["cases"] if c["method"] == "after" and c["rows"] == before["rows"])
        est, fit = mr["estimate_at_preset_kl_batch_gib"], mr["estimate_over_measured"]
        rows.append([f"KL / log-prob step, vocabulary {mr['args']['vocab']:,}, {mr['args']['length']:,}-token rows: "
                     f"peak memory of the step, {before['rows']} rows (memory_real)",
                     f"{after['step_mb']:,.0f} MiB (fused head)", f"{before['step_mb']:,.0f} MiB (full logits)",
                     f"{before['step_mb'] / after['step_mb']:.1f}x less; at the preset's {mr['args']['preset_kl_batch']} "
                     f"rows (estimate) {est['gpu_bfloat16_triton']['after']:.2f} vs "
                     f"{est['gpu_bfloat16_triton']['before']:.0f} GiB on a bf16 GPU",
                     "estimator within 25% of measured", _yes(fit["all_within_25_percent"])
                     + f" ({fit['min']:.2f}-{fit['max']:.2f})"])
    head = ["quantity", "ours", "baseline", "ratio", "goal", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(STEPS), help="run only these steps")
    ap.add_argument("--table", action="store_true", help="print the table from existing results and stop")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    steps = args.only or list(STEPS)
    for sub in ("boundary", "sample-efficiency"):
        shutil.rmtree(WORK / sub, ignore_errors=True)
    timings, t0 = {}, time.time()
    for name in steps:
        cmd = [sys.executable, str(HERE / STEPS[name][0]), *STEPS[name][1:]]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        s = time.time()
        rc = subprocess.run(cmd).returncode
        timings[name] = {"seconds": time.time() - s, "rc": rc}
        print(f"== {name}: {timings[name]['seconds']:.0f} s (rc {rc})", flush=True)
    total = time.time() - t0
    write_result("run_all", {"steps": {k: STEPS[k] for k in steps}, "timings": timings, "seconds_total": total,
                             "budget_seconds": 1200})
    print(f"\nall steps: {total:.0f} s (budget 1200 s on 2 cores)\n")
    print(table())
    if any(t["rc"] for t in timings.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Tables (Markdown) and plots (PNG) from runs and grids.

`write_report(DIR)` writes DIR/report.md and its PNG figures, for a grid directory (made by
`stagealign grid`, recognised by its grid-cells.json) or a single run directory (its
summary.json). Intervals are 95% over seeds; with a single seed they are unbounded and shown as
"n/a" (and no band is drawn), because one run says nothing about seed-to-seed spread.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from stagealign import artifacts
from stagealign.rundir import RunDir
from stagealign.headline import headline, metric_label
from stagealign.schedule import is_adaptive, path_text, short



def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt_ci(est: dict | None, fmt: str = "{:.3f}") -> str:
    """'0.123 [0.100, 0.150]', or '0.123 [n/a]' when the interval is unbounded (e.g. one seed)."""
    if est is None or est.get("mean") is None:
        return "-"
    m = fmt.format(est["mean"])
    if _finite(est.get("lo")) and _finite(est.get("hi")):
        return f"{m} [{fmt.format(est['lo'])}, {fmt.format(est['hi'])}]"
    return f"{m} [n/a]"


def _run_name(s: dict) -> str:
    sched = s["schedule"]
    if sched == "path":
        sched = "path " + path_text([r["source"] for r in s["iterations"]])
    elif sched == "auto" and s.get("rule"):
        sched = f"auto ({s['rule']})"
    return f"{s['policy']} / {sched}"


def markdown_table(columns: list[str], rows: list[list]) -> list[str]:
    """Header, separator (one per column, so they cannot drift apart) and one line per row."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(str(x) for x in row) + " |" for row in rows]


def iteration_table(summaries: list[dict]) -> str:
    """One row per iteration of each run: data source chosen, BS with its interval, metric before/after."""
    rows = []
    for s in summaries:
        name = _run_name(s)
        for r in s["iterations"]:
            bs = "-" if r["bs"] is None else f"{r['bs']:.3f} [{r['bs_lo']:.3f}, {r['bs_hi']:.3f}]"
            src = r["source"] if r["source"] != "blend" else f"blend {r['onpolicy_share']:.2f}"
            win = r["win_rate_truth"] if r["win_rate_truth"] is not None else r["win_rate_judge"]
            rows.append([name, r["iteration"], src, bs, r["decision"] or "-", r["pairs"], _f(r["before"]),
                         f"{_f(r['after'])} [{_f(r['after_lo'])}, {_f(r['after_hi'])}]", _f(win), _f(r["kl"])])
    name = metric_label(summaries[0].get("metric") or "reward") if summaries else "reward"
    return "\n".join(markdown_table(["run", "iter", "source", "BS [95% CI]", "stage", "pairs", f"{name} before",
                                      f"{name} after [95% CI]", "win vs init", "KL"], rows))


# ============================================================================ grid tables
def _cells(g: dict) -> list[tuple[str, dict]]:
    """A group's cells in grid order (JSON files store dicts with sorted keys)."""
    return [(n, g["cells"][n]) for n in g.get("order", list(g["cells"]))]


def _metric_name(m: dict) -> str:
    return metric_label(m["metric"], long=True)


def _cell_label(name: str, cell: dict) -> str:
    if cell["kind"] == "path":
        return name
    real = sorted(set(cell["realised"]))
    return f"{name} ({', '.join(real)})"


def effectiveness_table(m: dict) -> str:
    """One-iteration gain of static vs on-policy data from the initial policy, and their ratio."""
    rows = []
    dagger = False
    for g in m["groups"]:
        e = g["effectiveness"]
        ratio = fmt_ci(e["ratio"], "{:.2f}")
        if e["ratio"] is not None and not _positive(e["static_gain"]):
            ratio += " †"
            dagger = True
        rows.append([g["policy"], g["method"], len(g["seeds"]), fmt_ci(e["bs0"]), fmt_ci(e["static_gain"]),
                     fmt_ci(e["onpolicy_gain"]), ratio, fmt_ci(e["diff"])])
    lines = markdown_table(["policy", "method", "seeds", "BS of init", "static gain", "on-policy gain",
                            "on/off ratio", "on - off"], rows)
    if dagger:
        lines += ["", "† the static gain is <= 0, so the ratio's sign says nothing about which source is better; "
                  "read on - off."]
    return "\n".join(lines)


def _positive(est: dict | None) -> bool:
    return est is not None and est.get("mean") is not None and est["mean"] > 0


def path_table(m: dict) -> str:
    """Reward at every checkpoint and gain of every iteration, per path / schedule."""
    k = max((len(c["gain"]) for g in m["groups"] for c in g["cells"].values()), default=0)
    columns = (["policy", "method", "path / schedule"] + [f"{metric_label(m['metric'])} @{i}" for i in range(k + 1)]
               + [f"gain it{i}" for i in range(1, k + 1)])
    rows = []
    for g in m["groups"]:
        for name, c in _cells(g):
            rew = [fmt_ci(c["reward"][i]) if i < len(c["reward"]) else "-" for i in range(k + 1)]
            gain = [fmt_ci(c["gain"][i]) if i < len(c["gain"]) else "-" for i in range(k)]
            rows.append([g["policy"], g["method"], _cell_label(name, c), *rew, *gain])
    return "\n".join(markdown_table(columns, rows))


def choice_table(m: dict) -> str:
    """Best explicit path by mean final reward; what each schedule or rule cell did (the paths it
    took, how often the best) and its regret, also as a share of the best path's gain."""
    rows = []
    for g in m["groups"]:
        b = g["best_path"] or {}
        for name, a in g["adaptive"].items():
            share = a.get("onpolicy_share") or []
            took = (", ".join(sorted(set(a["realised"]))) if g["cells"][name]["kind"] != "blend"
                    else "share " + " -> ".join(f"{x:.2f}" for x in share))
            rs = a.get("regret_share")
            rows.append([g["policy"], g["method"], b.get("name", "-"), fmt_ci(b.get("final")), name, took,
                         "-" if a.get("chose_best") is None else f"{sum(a['chose_best'])}/{len(a['chose_best'])} seeds",
                         fmt_ci(a["final"]), fmt_ci(a.get("regret")), "-" if rs is None else f"{rs:.0%}"])
    return "\n".join(markdown_table(["policy", "method", "best path", "best final", "schedule", "took", "chose best",
                                      "final", "regret", "regret / best gain"], rows))


def bs_table(m: dict) -> str:
    """Boundary score measured before every iteration (i.e. of checkpoint k-1) along each path."""
    k = max((len(c["bs"]) for g in m["groups"] for c in g["cells"].values()), default=0)
    rows = [[g["policy"], g["method"], _cell_label(name, c),
             *(fmt_ci(c["bs"][i]) if i < len(c["bs"]) else "-" for i in range(k))]
            for g in m["groups"] for name, c in _cells(g)]
    return "\n".join(markdown_table(["policy", "method", "path / schedule"] + [f"BS @{i}" for i in range(k)], rows))


def calibration_table(m: dict) -> str:
    """Does the boundary score at a checkpoint predict which source gains more next?"""
    rows = [[g["policy"], g["method"], p["seed"], p["checkpoint"], p["iteration"],
             f"{p['bs']:.3f} [{_f(p['bs_lo'])}, {_f(p['bs_hi'])}]", p["decision"] or "-", f"{p['static_gain']:+.3f}",
             f"{p['onpolicy_gain']:+.3f}", f"{p['diff']:+.3f}", "yes" if p.get("significant") else "no",
             "yes" if p["agree"] else "no"]
            for g in m["groups"] for p in g["calibration"]]
    lines = markdown_table(["policy", "method", "seed", "checkpoint", "next iteration", "BS [95% CI]", "stage",
                            "static gain", "on-policy gain", "on - off", "gap significant", "BS agrees"], rows)
    cs = m["calibration_summary"]
    if cs.get("points") and "agree_ci" in cs:
        ci = cs["agree_ci"]
        sig = cs["agree_significant"]
        lines += ["", f"BS decision (threshold {m['threshold']}) picks the source that gained more at "
                      f"{cs['agree']:.0%} of {cs['points']} checkpoints (95% CI {_f(ci['lo'])}..{_f(ci['hi'])}); "
                      f"at {'-' if sig is None else f'{sig:.0%}'} of the {cs['significant_points']} checkpoints "
                      f"whose gap is significant. On-policy data gained more at {cs['onpolicy_better_share']:.0%}. "
                      f"The threshold that best separates the cases is {cs['best_threshold']:.3f} "
                      f"(agreement {cs['best_threshold_agree']:.0%}; 0 = always on-policy, 1 = always static)."]
    return "\n".join(lines)


def diagnostics_table(m: dict) -> str:
    """Diversity (distinct-n, n-gram and edit diversity) vs quality (mean judge score) per candidate source."""
    rows = [[g["policy"], g["method"], r["label"], r["sets"], _f(r["distinct_1"]), _f(r["distinct_2"]),
             _f(r["ngram_diversity"]), _f(r["edit_diversity"]), _f(r["quality_mean"]), _f(r["quality_spread"]),
             r["pairs"], _f(r["margin"]), _f(r["pair_edit_distance"])]
            for g in m["groups"] for r in g["diagnostics"]]
    return "\n".join(markdown_table(["policy", "method", "candidates", "sets", "distinct-1", "distinct-2",
                                      "2-gram diversity", "edit diversity", "mean quality", "quality spread",
                                      "pairs", "pair margin", "chosen-rejected edit dist."], rows))


def _decomposition_columns(m: dict) -> list[str]:
    """The plugin's compact columns (grid.json stores dicts with sorted keys, so the order is this
    list's); all statistics when the plugin names none."""
    cols = m.get("decomposition_columns")
    if cols:
        return list(cols)
    found = [key for g in m["groups"] for _, c in _cells(g) for d in (c.get("decomposition") or []) if d
             for key in d]
    return list(dict.fromkeys(found))


def has_decomposition(m: dict) -> bool:
    return any(c.get("decomposition") for g in m["groups"] for c in g["cells"].values())


def decomposition_table(m: dict) -> str:
    """Each checkpoint's evaluation answers in the world's terms (the run's plugin decomposes them,
    e.g. knowledge-token rate, utility per word, length, repeat share): means over seeds. The
    initial policy's row once per policy and method, then every iteration of every path / schedule."""
    cols = _decomposition_columns(m)
    rows = []
    for g in m["groups"]:
        cells = [(n, c) for n, c in _cells(g) if c.get("decomposition")]
        if not cells:
            continue
        init = next((c["decomposition"][0] for _, c in cells if c["decomposition"][0]), None)
        if init is not None:
            rows.append([g["policy"], g["method"], "initial policy", 0, *(_f((init.get(k) or {}).get("mean"))
                                                                          for k in cols)])
        for name, c in cells:
            for i, d in enumerate(c["decomposition"][1:], start=1):
                if d is None:
                    continue
                rows.append([g["policy"], g["method"], _cell_label(name, c), i,
                             *(_f((d.get(k) or {}).get("mean")) for k in cols)])
    return "\n".join(markdown_table(["policy", "method", "path / schedule", "checkpoint",
                                      *(k.replace("_", " ") for k in cols)], rows))


# ============================================================================ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _seeds_note(m: dict) -> str:
    n = max((len(g["seeds"]) for g in m["groups"]), default=0)
    return "1 seed: no CI bands" if n <= 1 else f"{n} seeds, 95% CI bands"


def _style(name: str, cell: dict, i: int) -> dict:
    if name == "auto":
        return {"color": "black", "linestyle": "--", "marker": "o", "markerfacecolor": "none", "linewidth": 2.0,
                "markersize": 9, "zorder": 5}
    if cell["kind"] == "blend":
        return {"color": "0.45", "linestyle": ":", "marker": "D", "linewidth": 2.0, "zorder": 4}
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    return {"color": colors[i % len(colors)], "linestyle": "-" if cell["kind"] == "path" else "-.", "marker": "o",
            "linewidth": 1.6}


def _line_label(name: str, cell: dict) -> str:
    return name.replace("path-", "") if cell["kind"] == "path" else name


def _panel_title(g: dict) -> str:
    """Policy / method, then what each adaptive schedule chose: its commonest paths with seed counts."""
    real = []
    for n, c in _cells(g):
        if is_adaptive(c["kind"]):
            counts = Counter(c["realised"]).most_common()
            shown = ", ".join(f"{p} {k}/{len(c['realised'])}" for p, k in counts[:2])
            real.append(f"{n}: {shown}" + (f" +{len(counts) - 2} more" if len(counts) > 2 else ""))
    return "\n".join([f"{g['policy']} / {g['method']}", *real])


def _grid_axes(plt, m: dict, width: float = 4.2, height: float = 3.4):
    policies = list(dict.fromkeys(g["policy"] for g in m["groups"]))
    methods = list(dict.fromkeys(g["method"] for g in m["groups"]))
    fig, axes = plt.subplots(len(methods), len(policies), figsize=(width * len(policies) + 1.8, height * len(methods)),
                             squeeze=False)
    where = {(g["policy"], g["method"]): axes[methods.index(g["method"])][policies.index(g["policy"])]
             for g in m["groups"]}
    for g in m["groups"]:
        where[(g["policy"], g["method"])].set_title(_panel_title(g), fontsize=10)
    return fig, axes, where


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="center right", frameon=False)


def plot_reward_paths(m: dict, path: Path) -> Path:
    """The discrepancy figure: reward per iteration along every path, one panel per initial policy."""
    plt = _plt()
    fig, axes, where = _grid_axes(plt, m)
    for g in m["groups"]:
        ax = where[(g["policy"], g["method"])]
        for i, (name, c) in enumerate(_cells(g)):
            est = c["reward"]
            xs = list(range(len(est)))
            ys = [e["mean"] for e in est]
            st = _style(name, c, i)
            label = _line_label(name, c)
            ax.plot(xs, ys, label=label, **st)
            if all(_finite(e["lo"]) and _finite(e["hi"]) for e in est):
                ax.fill_between(xs, [e["lo"] for e in est], [e["hi"] for e in est], color=st["color"], alpha=0.12)
        ax.set_xlabel("iteration")
        ax.set_ylabel(_metric_name(m))
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, plt, axes, f"{_metric_name(m).capitalize()} along each data path "
                          f"({_seeds_note(m)})", path)


def _finish_panels(fig, plt, axes, title: str, path: Path) -> Path:
    """Title, one shared legend to the right of the panels, save."""
    fig.suptitle(title)
    _legend(fig, axes)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 0.95))
    return _save(fig, plt, path)


def plot_effectiveness(m: dict, path: Path) -> Path:
    """First-iteration gain from the initial policy: static vs on-policy, per initial policy."""
    plt = _plt()
    methods = list(dict.fromkeys(g["method"] for g in m["groups"]))
    n_pol = len(dict.fromkeys(g["policy"] for g in m["groups"]))
    fig, axes = plt.subplots(1, len(methods), figsize=((2.0 + 2.4 * n_pol) * len(methods), 4.6), squeeze=False)
    for ax, meth in zip(axes[0], methods):
        gs = [g for g in m["groups"] if g["method"] == meth]
        w = 0.38
        for j, (key, lab, col) in enumerate((("static_gain", "static (off-policy)", "tab:blue"),
                                             ("onpolicy_gain", "on-policy", "tab:orange"))):
            xs, ys, err = [], [], [[], []]
            for i, g in enumerate(gs):
                e = g["effectiveness"][key]
                if e is None:
                    continue
                xs.append(i + (j - 0.5) * w)
                ys.append(e["mean"])
                ok = _finite(e["lo"]) and _finite(e["hi"])
                err[0].append(e["mean"] - e["lo"] if ok else 0.0)
                err[1].append(e["hi"] - e["mean"] if ok else 0.0)
            ax.bar(xs, ys, width=w, label=lab, color=col, yerr=err if any(err[0] + err[1]) else None, capsize=4)
        for i, g in enumerate(gs):
            e = g["effectiveness"]
            r, dif = e["ratio"], e["diff"]
            top = max((e[k] or {}).get("mean") or 0.0 for k in ("static_gain", "onpolicy_gain"))
            if r is not None and _finite(r["mean"]) and _positive(e["static_gain"]):
                text = f"on/off = {r['mean']:.2f}x"
            elif dif is not None:
                text = f"on - off = {dif['mean']:+.3f}\n(static gain <= 0)"
            else:
                continue
            ax.annotate(text, (i, top), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(gs)))
        ax.set_xticklabels([g["policy"] + ("" if g["effectiveness"]["bs0"] is None else
                                           f"\nBS={g['effectiveness']['bs0']['mean']:.2f}") for g in gs])
        ax.set_xlabel("initial policy (its boundary score)")
        ax.set_ylabel(f"gain in {_metric_name(m)} (1 iteration)")
        ax.set_title(f"One-iteration effectiveness ({meth})")
        ax.margins(y=0.3)
        ax.legend(loc="best", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Static vs on-policy data, first iteration ({_seeds_note(m).replace('bands', 'bars')})",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return _save(fig, plt, path)


def plot_bs_trajectories(m: dict, path: Path) -> Path:
    """Boundary score of checkpoint 0..k-1 along each path, with the decision threshold."""
    plt = _plt()
    fig, axes, where = _grid_axes(plt, m)
    for g in m["groups"]:
        ax = where[(g["policy"], g["method"])]
        n = 1
        for i, (name, c) in enumerate(_cells(g)):
            pts = [(x, e) for x, e in enumerate(c["bs"]) if e is not None]
            if not pts:
                continue
            n = max(n, len(c["bs"]))
            st = _style(name, c, i)
            label = _line_label(name, c)
            jitter = 0.03 * (i - (len(g["cells"]) - 1) / 2)  # paths share checkpoints: keep them visible
            xs = [x + jitter for x, _ in pts]
            ax.plot(xs, [e["mean"] for _, e in pts], label=label, **st)
            if all(_finite(e["lo"]) and _finite(e["hi"]) for _, e in pts):
                ax.fill_between(xs, [e["lo"] for _, e in pts], [e["hi"] for _, e in pts], color=st["color"],
                                alpha=0.12)
        ax.axhline(m["threshold"], color="red", linestyle="--", linewidth=1, label=f"threshold {m['threshold']}")
        ax.text(0.01, m["threshold"] + 0.02, "fine-tuning stage: on-policy", transform=ax.get_yaxis_transform(),
                fontsize=7, color="red", va="bottom")
        ax.text(0.01, m["threshold"] - 0.02, "injection stage: static", transform=ax.get_yaxis_transform(),
                fontsize=7, color="red", va="top")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(range(n))
        ax.set_xlabel("checkpoint (iterations trained)")
        ax.set_ylabel("boundary score (on-policy win share)")
        ax.grid(alpha=0.3)
    return _finish_panels(fig, plt, axes, f"Boundary score along each path ({_seeds_note(m)})", path)


def plot_calibration(m: dict, path: Path) -> Path:
    """BS at a checkpoint vs (on-policy gain - static gain) of the next iteration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    thr = m["threshold"]
    policies = list(dict.fromkeys(g["policy"] for g in m["groups"]))
    colors = ["tab:red", "tab:purple", "tab:green", "tab:blue", "tab:orange", "tab:brown", "tab:pink"]
    markers = {1: "o", 2: "s", 3: "^", 4: "v", 5: "P", 6: "X"}
    methods = list(dict.fromkeys(g["method"] for g in m["groups"]))
    pts = [(g, p) for g in m["groups"] for p in g["calibration"]]
    ys = [p["diff"] for _, p in pts] or [0.0]
    span = max(abs(min(ys)), abs(max(ys)), 1e-3) * 1.25
    ax.axvspan(thr, 1.0, ymin=0.5, ymax=1.0, color="tab:green", alpha=0.07)
    ax.axvspan(0.0, thr, ymin=0.0, ymax=0.5, color="tab:green", alpha=0.07)
    seen = set()
    for g, p in pts:
        c = colors[policies.index(g["policy"]) % len(colors)]
        mk = markers.get(p["iteration"], "o")
        fill = c if methods.index(g["method"]) == 0 else "none"
        label = f"{g['policy']}" + (f" / {g['method']}" if len(methods) > 1 else "")
        xerr = None
        if _finite(p["bs_lo"]) and _finite(p["bs_hi"]):
            xerr = [[p["bs"] - p["bs_lo"]], [p["bs_hi"] - p["bs"]]]
        ax.errorbar([p["bs"]], [p["diff"]], xerr=xerr, fmt=mk, color=c, markerfacecolor=fill, markersize=8,
                    capsize=2, elinewidth=0.8, label=label if label not in seen else None)
        seen.add(label)
        ax.annotate(p["checkpoint"], (p["bs"], p["diff"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    for it, mk in markers.items():
        if any(p["iteration"] == it for _, p in pts):
            where = "from init" if it == 1 else f"after {it - 1} iter."
            ax.scatter([], [], marker=mk, color="0.4", label=f"iteration {it} ({where})")
    if not pts:
        ax.text(0.5, 0.75, "no checkpoint with both continuations trained", transform=ax.transAxes, ha="center")
    ax.axvline(thr, color="red", linestyle="--", linewidth=1, label=f"threshold {thr}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-span, span)
    ax.set_xlabel("boundary score at the checkpoint (on-policy win share)")
    ax.set_ylabel(f"on-policy gain - static gain (next iteration, {_metric_name(m)})")
    agree = m["calibration_summary"]["agree"]
    ax.set_title("Boundary score calibration" + ("" if agree is None else
                                                  f": BS picks the better source in {agree:.0%} of "
                                                  f"{m['calibration_summary']['points']} checkpoints")
                 + "\n(green quadrants: BS agrees with the measured gains)", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_diversity_quality(m: dict, path: Path) -> Path:
    """Diversity (three measures) vs mean judge score of the static pool and on-policy candidates."""
    plt = _plt()
    measures = (("distinct_2", "distinct-2 (share of distinct bigrams)"),
                ("ngram_diversity", "2-gram diversity (1 - mean Jaccard)"),
                ("edit_diversity", "edit diversity (normalised Levenshtein)"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    policies = list(dict.fromkeys(g["policy"] for g in m["groups"]))
    colors = ["tab:red", "tab:purple", "tab:green", "tab:blue", "tab:orange", "tab:brown"]
    markers = ["o", "v", "^", "<", ">", "P", "X", "*"]
    checkpoints = sorted({r["checkpoint"] for g in m["groups"] for r in g["diagnostics"] if r["origin"] != "static"},
                         key=lambda c: (0 if c == "init" else c.count("-") + 1, c))
    for ax, (key, xlabel) in zip(axes, measures):
        static_done = False
        for g in m["groups"]:
            c = colors[policies.index(g["policy"]) % len(colors)]
            for r in g["diagnostics"]:
                if r[key] is None or r["quality_mean"] is None:
                    continue
                if r["origin"] == "static":
                    if static_done:
                        continue
                    static_done = True
                    ax.scatter(r[key], r["quality_mean"], marker="s", s=110, color="tab:blue", edgecolor="black",
                               label="static pool", zorder=3)
                    continue
                mk = markers[checkpoints.index(r["checkpoint"]) % len(markers)]
                name = g["policy"] + ("" if len({x["method"] for x in m["groups"]}) == 1 else f"/{g['method']}")
                ax.scatter(r[key], r["quality_mean"], marker=mk, s=70, color=c, edgecolor="black", linewidth=0.5,
                           label=f"on-policy: {name} @ {r['checkpoint']}", zorder=3, alpha=0.85)
        if not any(g["diagnostics"] for g in m["groups"]):
            ax.text(0.5, 0.5, "no candidate files found", transform=ax.transAxes, ha="center", va="center")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean judge score of the candidates (quality)")
        ax.grid(alpha=0.3)
        ax.margins(0.15)
    fig.suptitle("Candidate sets: diversity vs quality (static pool vs on-policy samples of each checkpoint; "
                 "@ = iterations trained on)")
    _legend(fig, axes[None, :] if hasattr(axes, "ndim") and axes.ndim == 1 else axes)
    fig.tight_layout(rect=(0, 0, 1 - 2.8 / fig.get_figwidth(), 0.94))
    return _save(fig, plt, path)


def plot_run_reward(summary: dict, path: Path) -> Path:
    """Reward per iteration of one run, with its 95% interval over eval prompts."""
    plt = _plt()
    rows = summary["iterations"]
    metric = summary.get("metric") or (rows[0]["metric"] if rows else headline(summary["initial"])[0])
    init = summary["initial"][metric]
    xs = list(range(len(rows) + 1))
    ys = [init["mean"]] + [r["after"] for r in rows]
    lo = [init["lo"]] + [r["after_lo"] for r in rows]
    hi = [init["hi"]] + [r["after_hi"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(xs, ys, marker="o", color="tab:blue", label=_run_name(summary))
    ax.fill_between(xs, lo, hi, color="tab:blue", alpha=0.15, label="95% CI over eval prompts")
    for x, r in zip(xs[1:], rows):
        src = short(r["source"], r["onpolicy_share"])
        ax.annotate(f"trained on {src}" + ("" if r["bs"] is None else f"\n(BS before: {r['bs']:.2f})"),
                    (x, r["after"]),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric_label(metric, long=True))
    ax.set_title(f"{_run_name(summary)} ({summary['method']}, seed {summary['seed']})")
    ax.margins(y=0.2)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ============================================================================ reports
def grid_report_markdown(m: dict, figures: dict[str, str]) -> str:
    seeds = sorted({s for g in m["groups"] for s in g["seeds"]})
    one = len(seeds) <= 1
    parts = [
        f"# Grid report: `{m['grid_dir']}`", "",
        f"Metric: {_metric_name(m)}, mean over held-out eval prompts. Seeds: {seeds}. "
        f"Intervals: 95% over seeds (t for means and differences, paired bootstrap for the ratio)"
        + ("; with one seed they are unbounded, shown as n/a." if one else "."),
        f"A path such as `off-on` trains iteration 1 on static (off-policy) pairs and iteration 2 on on-policy "
        f"pairs. BS @k is the boundary score (share of on-policy vs static comparisons won by the policy's own "
        f"answers) measured on the checkpoint after k iterations; threshold {m['threshold']}.", "",
        "## One-iteration effectiveness: static vs on-policy data", "",
        effectiveness_table(m), "", f"![effectiveness]({figures['effectiveness']})", "",
        f"## {metric_label(m['metric']).capitalize()} along each path", "", path_table(m), "",
        f"![reward per path]({figures['reward']})", "",
        "## Best path, auto and blend", "",
        f"Best path = highest mean final {metric_label(m['metric'])} among the explicit paths; regret = best path's "
        f"final {metric_label(m['metric'])} - the schedule's final one (paired by seed).", "", choice_table(m), "",
        "## Boundary score trajectories", "", bs_table(m), "", f"![BS trajectories]({figures['bs']})", "",
        "## Boundary score calibration", "",
        "Every checkpoint from which both continuations were trained: does BS >= threshold coincide with "
        "on-policy data gaining more in the next iteration?", "",
        calibration_table(m) if m["calibration_summary"]["points"] else "(no checkpoint with both continuations)",
        "", f"![BS calibration]({figures['calibration']})", "",
        "## Candidate diagnostics: diversity vs quality", "",
        "Static pool (all seeds share it) and on-policy candidates sampled from each checkpoint (pooled over "
        "seeds). Diversity within one prompt's candidates; quality = mean judge score; pair columns from the "
        "pairs built from these candidates.", "",
        diagnostics_table(m), "", f"![diversity vs quality]({figures['diversity']})", "",
    ]
    if has_decomposition(m):
        parts += ["## What each checkpoint's answers hold", "",
                  "The evaluation answers of every checkpoint (iterations trained along the path), decomposed by "
                  "the run's plugin (`stagealign world show --checkpoint RUN_DIR` shows every statistic of one "
                  "run); means over seeds, full intervals in grid.json.", "", decomposition_table(m), ""]
    return "\n".join(parts)


def write_grid_report(out_dir: str | Path, metrics: dict | None = None) -> Path:
    from stagealign.grid import grid_metrics

    out = Path(out_dir)
    m = metrics if metrics is not None else grid_metrics(out)
    figures = {"reward": "reward_paths.png", "effectiveness": "effectiveness.png", "bs": "bs_trajectories.png",
               "calibration": "bs_calibration.png", "diversity": "diversity_quality.png"}
    plot_reward_paths(m, out / figures["reward"])
    plot_effectiveness(m, out / figures["effectiveness"])
    plot_bs_trajectories(m, out / figures["bs"])
    plot_calibration(m, out / figures["calibration"])
    plot_diversity_quality(m, out / figures["diversity"])
    path = out / "report.md"
    artifacts.write_text(path, grid_report_markdown(m, figures))
    return path


def write_run_report(run_dir: str | Path) -> Path:
    d = Path(run_dir)
    summary = RunDir(d).read_summary()
    plot_run_reward(summary, d / "reward.png")
    text = "\n".join([f"# Run report: `{d}`", "", f"Policy {summary['policy']}, method {summary['method']}, "
                      f"schedule {summary['schedule']}, seed {summary['seed']}. Intervals: 95% over eval prompts "
                      f"(clustered by prompt).", "", iteration_table([summary]), "", "![reward](reward.png)", ""])
    path = d / "report.md"
    artifacts.write_text(path, text)
    return path


def write_report(directory: str | Path) -> Path:
    """DIR/report.md (+ PNGs) for a grid directory or a single run directory."""
    from stagealign.grid import MANIFEST, GridError

    d, run = Path(directory), RunDir(directory)
    if (d / MANIFEST).is_file():
        return write_grid_report(d)
    if run.summary_path.is_file():
        return write_run_report(d)
    if run.started:
        raise GridError(f"{d}: this run has not finished (no summary.json); resume it with `stagealign run`")
    raise GridError(f"{d}: neither a grid directory (no grid-cells.json) nor a finished run (no summary.json)")


def report_tables(m: dict) -> str:
    """The grid's tables as one Markdown string (for the terminal)."""
    return "\n\n".join([effectiveness_table(m), choice_table(m)])

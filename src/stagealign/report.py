"""Tables (Markdown) and plots (PNG) from runs and grids."""

from __future__ import annotations


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def iteration_table(summaries: list[dict]) -> str:
    """One row per iteration of each run: data source chosen, BS with its interval, metric before/after."""
    head = ("| run | iter | source | BS [95% CI] | stage | pairs | reward before | reward after [95% CI] "
            "| win vs init | KL |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for s in summaries:
        name = f"{s['policy']} / {s['schedule']}"
        for r in s["iterations"]:
            bs = "-" if r["bs"] is None else f"{r['bs']:.3f} [{r['bs_lo']:.3f}, {r['bs_hi']:.3f}]"
            src = r["source"] if r["source"] != "blend" else f"blend {r['onpolicy_share']:.2f}"
            win = r["win_rate_truth"] if r["win_rate_truth"] is not None else r["win_rate_judge"]
            lines.append(f"| {name} | {r['iteration']} | {src} | {bs} | {r['decision'] or '-'} | {r['pairs']} "
                         f"| {_f(r['before'])} | {_f(r['after'])} [{_f(r['after_lo'])}, {_f(r['after_hi'])}] "
                         f"| {_f(win)} | {_f(r['kl'])} |")
    return "\n".join(lines)

"""Diversity or quality? The controlled-pool comparison (issue #5 item 3) from two finished grids.

The multi-source pool (four writers: diverse, mixed quality) against the single-source pool (the
best writer answering several times: high quality, low diversity), same world, same initial
policies, same seeds. Per initial policy: the first static iteration's ground-truth gain with
each pool and their paired difference (single - multi) over seeds with a 95% t interval, plus
both pools' diversity and quality diagnostics. The paper's reading: diversity helps in the
injection stage (weak: multi > single), quality in the fine-tuning stage (strong: single > multi).

    python bench/pool_claims.py --multi bench/results/grid-world0-dpo/grid.json \
        --single runs/science/pool-single --out bench/results/pool_claims-world0-dpo.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stagealign import artifacts
from stagealign.grid import grid_metrics
from stagealign.report import markdown_table
from stagealign.stats import diff_ci

DIAG = ("distinct_1", "edit_diversity", "quality_mean")


def _metrics(path: Path) -> dict:
    return artifacts.read_json(path) if path.suffix == ".json" else grid_metrics(path)


def _static_gains(group: dict) -> dict[int, float]:
    """Seed -> gain of the first iteration on static pairs (from any path that starts off-policy)."""
    for name, cell in group["cells"].items():
        if cell["kind"] == "path" and cell["path"][0] == "static":
            return dict(zip(cell["seeds"], cell["gain"][0]["values"]))
    raise SystemExit(f"{group['policy']}: no path starting with a static iteration")


def _pool_diag(group: dict) -> dict:
    d = next(x for x in group["diagnostics"] if x["checkpoint"] == "pool")
    return {k: d[k] for k in DIAG}


def compare(multi: dict, single: dict) -> list[dict]:
    rows = []
    singles = {(g["policy"], g["method"]): g for g in single["groups"]}
    for g in multi["groups"]:
        s = singles.get((g["policy"], g["method"]))
        if s is None:
            continue
        a, b = _static_gains(s), _static_gains(g)
        seeds = sorted(set(a) & set(b))
        d = diff_ci([a[k] for k in seeds], [b[k] for k in seeds]).to_dict(json_safe=True)
        rows.append({"policy": g["policy"], "method": g["method"], "seeds": seeds,
                     "static_gain_single": [a[k] for k in seeds], "static_gain_multi": [b[k] for k in seeds],
                     "single_minus_multi": {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"]},
                     "pool_single": _pool_diag(s), "pool_multi": _pool_diag(g)})
    return rows


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def table(rows: list[dict]) -> str:
    def ci(e):
        return f"{e['mean']:+.3f}" + ("" if e["lo"] is None else f" [{e['lo']:+.3f}, {e['hi']:+.3f}]")

    return "\n".join(markdown_table(
        ["policy", "method", "seeds", "static gain, multi-source", "static gain, single-source", "single - multi"],
        [[r["policy"], r["method"], len(r["seeds"]), f"{_mean(r['static_gain_multi']):+.3f}",
          f"{_mean(r['static_gain_single']):+.3f}", ci(r["single_minus_multi"])] for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--multi", type=Path, required=True, help="grid dir or grid.json with the multi-source pool")
    ap.add_argument("--single", type=Path, required=True, help="grid dir or grid.json with the single-source pool")
    ap.add_argument("--out", type=Path, default=Path("bench/results/pool_claims.json"))
    args = ap.parse_args()
    rows = compare(_metrics(args.multi), _metrics(args.single))
    if not rows:
        raise SystemExit("the two grids share no (policy, method) group")
    artifacts.write_json(args.out, {"multi": str(args.multi), "single": str(args.single), "rows": rows})
    print(table(rows))
    r = rows[0]
    print(f"\npools: multi {r['pool_multi']}\n       single {r['pool_single']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()

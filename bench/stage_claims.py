"""Check the paper's stage claims (issue #3 (a)-(d)) on finished grids, one row per world and method.

Reads the `grid.json` of each grid directory given (one world seed each, any methods) and, per
(world, method), tests:

- (a) weak: on-policy gain - static gain < 0 (ratio on/off < 1); strong: > 0 (ratio > 1); and the
  two intervals are separated. Decided on the paired difference (well defined when a static gain
  is ~0 or negative, where the ratio is not); the ratio is reported next to it.
- (b) boundary: the best two-iteration path (highest final ground-truth reward, mean over seeds)
  is off->on, and off->on minus each other path is > 0 over seeds (paired). The same paired
  off->on minus on->on is reported for `weak`, where world 0 showed the Zephyr pattern.

A statement *holds* only when its 95% interval (t over seeds) excludes zero in the claimed
direction. Writes JSON (every number) and prints a Markdown table.

    python bench/stage_claims.py runs/science/w0-dpo runs/science/w0-slic runs/science/w1 ... \
        --out bench/results/stage_claims.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from stagealign import artifacts
from stagealign.grid import grid_metrics
from stagealign.report import markdown_table
from stagealign.stats import diff_ci

PATHS = ("path-off-off", "path-off-on", "path-on-off", "path-on-on")


def _est(e) -> dict:
    return {"mean": e.mean, "lo": e.lo, "hi": e.hi, "n": e.n_clusters}


def _fmt(e: dict | None) -> str:
    if e is None or e.get("mean") is None:
        return "-"
    lo, hi = e.get("lo"), e.get("hi")
    ci = "" if lo is None or hi is None else f" [{lo:+.3f}, {hi:+.3f}]"
    return f"{e['mean']:+.3f}{ci}"


def _by_seed(cell: dict, key: str = "final") -> dict[int, float]:
    return dict(zip(cell["seeds"], cell[key]["values"]))


def _paired(a: dict[int, float], b: dict[int, float]) -> dict:
    seeds = sorted(set(a) & set(b))
    return _est(diff_ci([a[s] for s in seeds], [b[s] for s in seeds]))


def claims(m: dict, world: int | str) -> list[dict]:
    groups = {(g["policy"], g["method"]): g for g in m["groups"]}
    rows = []
    for method in dict.fromkeys(g["method"] for g in m["groups"]):
        row: dict = {"world": world, "method": method}
        eff = {p: groups[(p, method)]["effectiveness"] for p in ("weak", "strong") if (p, method) in groups}
        if len(eff) == 2:
            weak, strong = eff["weak"]["diff"], eff["strong"]["diff"]
            row["a"] = {
                "weak_on_minus_static": weak, "strong_on_minus_static": strong,
                "weak_ratio": eff["weak"]["ratio"], "strong_ratio": eff["strong"]["ratio"],
                "weak_static_gain": eff["weak"]["static_gain"], "weak_onpolicy_gain": eff["weak"]["onpolicy_gain"],
                "strong_static_gain": eff["strong"]["static_gain"],
                "strong_onpolicy_gain": eff["strong"]["onpolicy_gain"],
                "weak_holds": weak["hi"] is not None and weak["hi"] < 0,
                "strong_holds": strong["lo"] is not None and strong["lo"] > 0,
                "separated": weak["hi"] is not None and strong["lo"] is not None and weak["hi"] < strong["lo"],
            }
            row["a"]["holds"] = row["a"]["weak_holds"] and row["a"]["strong_holds"] and row["a"]["separated"]
        g = groups.get(("boundary", method))
        if g is not None and all(p in g["cells"] for p in PATHS):
            cells = {p: g["cells"][p] for p in PATHS}
            best = max(PATHS, key=lambda p: cells[p]["final"]["mean"])
            offon = _by_seed(cells["path-off-on"])
            vs = {p.replace("path-", ""): _paired(offon, _by_seed(cells[p])) for p in PATHS if p != "path-off-on"}
            row["b"] = {
                "final": {p.replace("path-", ""): cells[p]["final"] for p in PATHS},
                "best_path": best.replace("path-", ""), "off_on_minus": vs,
                "bs0": g["effectiveness"]["bs0"],
                "bs_after_static": cells["path-off-off"]["bs"][1] if len(cells["path-off-off"]["bs"]) > 1 else None,
                "holds": best == "path-off-on" and all(v["lo"] is not None and v["lo"] > 0 for v in vs.values()),
            }
        w = groups.get(("weak", method))
        if w is not None and all(p in w["cells"] for p in PATHS):  # where the Zephyr pattern showed in world 0
            row["weak_off_on_minus_on_on"] = _paired(_by_seed(w["cells"]["path-off-on"]),
                                                     _by_seed(w["cells"]["path-on-on"]))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        a, b = r.get("a", {}), r.get("b", {})
        out.append([
            r["world"], r["method"],
            _fmt(a.get("weak_on_minus_static")), _fmt(a.get("strong_on_minus_static")),
            {True: "holds", False: "no"}.get(a.get("holds"), "-"),
            b.get("best_path", "-"), _fmt((b.get("off_on_minus") or {}).get("on-on")),
            {True: "holds", False: "no"}.get(b.get("holds"), "-"), _fmt(r.get("weak_off_on_minus_on_on")),
        ])
    return "\n".join(markdown_table(
        ["world", "method", "(a) weak: on - static", "(a) strong: on - static", "(a)",
         "(b) boundary best path", "(b) off-on - on-on", "(b)", "weak: off-on - on-on"], out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grids", nargs="+", help="grid directories, or WORLD_SEED:path/to/grid.json for a saved "
                    "grid.json whose run directories are gone")
    ap.add_argument("--out", type=Path, default=Path("bench/results/stage_claims.json"))
    args = ap.parse_args()
    by_world: dict[str, list[dict]] = {}  # one world's policies may come from several grids
    for arg in args.grids:
        world, _, path = arg.rpartition(":")
        d = Path(path)
        if d.suffix == ".json":
            m = artifacts.read_json(d)
        else:
            m = grid_metrics(d)
            world = world or _world_seed(d)
        by_world.setdefault(world, []).extend(m["groups"])
    rows = [r for world, groups in by_world.items() for r in claims({"groups": groups}, world)]
    artifacts.write_json(args.out, {"claims": rows})
    print(table(rows))
    print(f"\nwritten: {args.out}")


def _world_seed(grid_dir: Path) -> str:
    """The world seed the grid's cells ran with (every cell of a grid shares the world)."""
    for cfg in sorted(grid_dir.glob("*/*/*/*/config.yaml"))[:1]:
        return str(yaml.safe_load(cfg.read_text(encoding="utf-8"))["world"]["seed"])
    raise SystemExit(f"{grid_dir}: no cell config.yaml found; is this a grid directory?")


if __name__ == "__main__":
    main()

"""Peak memory of the data path and of the boundary probe as their sizes grow.

Two measurements, each size in a fresh child process so that the peak RSS (the high-water mark
VmHWM, or `ru_maxrss` off Linux) belongs to that size alone:

* pool: a synthetic static pool of N prompts x 4 answers (the testbed's pool writers; prompts made
  unique with a third modifier token) written to JSONL, then loaded with `data.pool.load_pool`,
  scored with a callable judge (the world's ground truth wrapped like the pipeline wraps it,
  `CachedJudge(CallableJudge(...))`, through `data.pairs.score_sets`, which calls the judge in
  chunks of `SCORE_CHUNK` candidates), paired with `make_pairs` and written with
  `artifacts.write_jsonl`. Recorded per phase: RSS high-water mark after the phase, Python heap
  (tracemalloc) peak during the phase and retained after it.
* probe: `boundary.measure` with a tiny testbed policy on P probe prompts (fixed size, no
  sequential stop), same records.

Writes `bench/results/memory.json` (machine, versions, date, all records, and a growth summary:
bytes per prompt between the smallest and the largest size, and the marginal bytes per extra
prompt between consecutive sizes: about constant = linear, falling to 0 = bounded).

    python bench/memory.py                              # pool 1k/4k/16k, probe 64/256/1024
    python bench/memory.py --sizes 500 2000 --probe 32 128 --out /tmp/mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _meta import peak_rss_mb  # noqa: E402
TINY = ["world.scale=small", "world.model.hidden_size=32", "world.model.layers=1", "world.model.heads=2",
        "world.model.intermediate_size=64"] + [
    f"world.policies.{n}.{k}={v}" for n in ("weak", "boundary", "strong")
    for k, v in (("examples", 512), ("epochs", 2), ("learning_rate", 0.005))]


def unique_prompts(n: int, n_families: int = 8, n_modifiers: int = 16) -> list[str]:
    """`n` distinct prompts of the testbed's grammar (family + three modifiers)."""
    cap = n_families * n_modifiers ** 3
    if n > cap:
        raise ValueError(f"at most {cap} distinct prompts")
    out = []
    for i in range(n):
        f, r = i % n_families, i // n_families
        out.append(f"t{f} m{r % n_modifiers} m{(r // n_modifiers) % n_modifiers} "
                   f"m{(r // n_modifiers ** 2) % n_modifiers}")
    return out


def _world():
    from stagealign.config import load_config
    from stagealign.testbed.world import World

    return World(load_config(None, TINY).world)


def write_pool(path: Path, n: int) -> None:
    """Generic-format JSONL: prompt_id, prompt, responses (one per pool writer), models."""
    world = _world()
    prompts = unique_prompts(n)
    rng = np.random.default_rng(0)
    answers = [world.write(w, prompts, 1, rng) for w in world.cfg.pool]
    names = [w.name for w in world.cfg.pool]
    with open(path, "w", encoding="utf-8") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"prompt_id": f"p{i}", "prompt": p, "responses": [a[i][0] for a in answers],
                                 "models": names}) + "\n")


class _Phases:
    """Per phase: RSS high-water mark after it, or (traced) Python heap peak during it and retained
    after it. tracemalloc's own bookkeeping inflates RSS, so the two are measured in separate runs."""

    def __init__(self, trace: bool):
        self.trace = trace
        if trace:
            tracemalloc.start()
        self.rows: dict[str, dict] = {"baseline": self._now(0.0)}

    def _now(self, seconds: float) -> dict:
        if not self.trace:
            return {"rss_peak_mb": peak_rss_mb(), "seconds": seconds}
        cur, peak = tracemalloc.get_traced_memory()
        return {"py_peak_mb": peak / 2**20, "py_retained_mb": cur / 2**20, "seconds": seconds}

    def phase(self, name: str, fn):
        if self.trace:
            tracemalloc.reset_peak()
        t0 = time.perf_counter()
        out = fn()
        self.rows[name] = self._now(time.perf_counter() - t0)
        return out


def child_pool(path: Path, work: Path, trace: bool = False) -> dict:
    from stagealign import artifacts
    from stagealign.data.pool import load_pool
    from stagealign.data.pairs import SCORE_CHUNK, make_pairs, score_sets
    from stagealign.judges.base import CachedJudge, CallableJudge

    world = _world()
    world.utilities("t0 m0 m0 m0")  # warm the world's cached draws before the baseline
    judge = CachedJudge(CallableJudge(world.rewards, name="ground_truth"))
    ph = _Phases(trace)
    pool = ph.phase("load", lambda: load_pool(path))
    sets = list(pool.sets.values())
    ph.phase("score", lambda: score_sets(sets, judge))
    pairs, dropped = ph.phase("pair", lambda: make_pairs(sets, rule="max-min", iteration=1,
                                                         rng=np.random.default_rng(0)))
    ph.phase("write", lambda: artifacts.write_jsonl(work / "pairs.jsonl", (p.to_row() for p in pairs)))
    return {"prompts": len(pool), "candidates": sum(len(s.candidates) for s in sets), "pairs": len(pairs),
            "judge_calls": judge.calls, "score_chunk": SCORE_CHUNK, "phases": ph.rows}


def child_probe(n: int, trace: bool = False) -> dict:
    from stagealign.boundary import measure
    from stagealign.config import load_config
    from stagealign.data.schema import Prompt
    from stagealign.judges.base import CachedJudge, CallableJudge
    from stagealign.policy import load_policy
    from stagealign.data.schema import prompt_id
    from stagealign.testbed.provider import static_pool
    from stagealign.testbed.policies import initial_policy_dir
    from stagealign.testbed.world import World
    from stagealign.training.common import quiet_libraries

    quiet_libraries()
    cfg = load_config(None, [*TINY, f"boundary.probe_prompts={n}", "boundary.sequential=false"])
    world = World(cfg.world)
    policy = load_policy(initial_policy_dir(world, "boundary", log=lambda m: None))
    probe = [Prompt(prompt_id(t), t) for t in unique_prompts(n)]
    pool = static_pool(world, probe)
    judge = CachedJudge(CallableJudge(world.rewards, name="ground_truth"))
    ph = _Phases(trace)
    res = ph.phase("measure", lambda: measure(policy, probe, pool, judge, cfg.boundary, cfg.generation, seed=0))
    return {"prompts": res.prompts, "comparisons": res.comparisons, "generations": res.generations,
            "bs": res.bs, "phases": ph.rows}


def _run_child(args: list[str]) -> dict:
    """One size, twice in fresh processes: RSS untraced, then the Python heap under tracemalloc."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    recs = []
    for trace in ("rss", "trace"):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", trace, *args],
                             capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
        recs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rss, traced = recs
    for name, row in rss["phases"].items():
        row.update({k: v for k, v in traced["phases"][name].items() if k != "seconds"})
    return rss


def growth(records: list[dict], phase: str, key: str = "rss_peak_mb") -> dict:
    """Growth of `key` after `phase` over the baseline, from the smallest to the largest size."""
    xs = np.array([r["prompts"] for r in records], dtype=float)
    ys = np.array([r["phases"][phase][key] - (r["phases"]["baseline"][key] if key != "py_peak_mb" else 0.0)
                   for r in records])
    steps = (np.diff(ys) * 2**20 / np.diff(xs)).round(0).tolist()
    return {"phase": phase, "metric": key, "sizes": xs.astype(int).tolist(), "mb_over_baseline": ys.round(2).tolist(),
            "bytes_per_prompt": float((ys[-1] - ys[0]) * 2**20 / (xs[-1] - xs[0])) if len(xs) > 1 else None,
            # marginal bytes per extra prompt between consecutive sizes: ~constant = linear,
            # falling to ~0 = bounded, rising = super-linear
            "marginal_bytes_per_prompt": steps, "shape": _shape(steps)}


def _shape(steps: list[float]) -> str | None:
    """'linear' (marginal cost steady), 'bounded' (falls to a fifth or less), 'super-linear' (rises)."""
    if len(steps) < 2 or steps[0] <= 0:
        return None
    r = steps[-1] / steps[0]
    return "bounded" if r <= 0.2 else "linear" if r <= 1.3 else "super-linear"


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("stagealign", "torch", "transformers", "trl", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="pool prompts")
    ap.add_argument("--probe", type=int, nargs="+", default=[64, 256, 1024], help="probe prompts")
    ap.add_argument("--out", default=str(HERE / "results" / "memory.json"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, kind, *rest = args.child
        trace = mode == "trace"
        rec = child_pool(Path(rest[0]), Path(rest[1]), trace) if kind == "pool" else child_probe(int(rest[0]), trace)
        print(json.dumps(rec))
        return
    pool_recs, probe_recs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"pool-{n}.jsonl"
            write_pool(path, n)
            rec = _run_child(["pool", str(path), tmp])
            rec["file_mb"] = path.stat().st_size / 2**20
            pool_recs.append(rec)
            print(f"pool {n:>6}: " + ", ".join(f"{k} {v['rss_peak_mb']:.0f} MiB" for k, v in rec["phases"].items()),
                  flush=True)
    for n in args.probe:
        rec = _run_child(["probe", str(n)])
        probe_recs.append(rec)
        print(f"probe {n:>5}: " + ", ".join(f"{k} {v['rss_peak_mb']:.0f} MiB" for k, v in rec["phases"].items()),
              flush=True)
    summary = {
        "pool_rss": [growth(pool_recs, p) for p in ("load", "score", "pair", "write")],
        "pool_python_heap_peak": [growth(pool_recs, p, "py_peak_mb") for p in ("load", "score", "pair", "write")],
        "pool_python_heap_retained": growth(pool_recs, "write", "py_retained_mb"),
        "probe_rss": growth(probe_recs, "measure"),
        "probe_python_heap_peak": growth(probe_recs, "measure", "py_peak_mb"),
    }
    result = {
        "bench": "memory", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "versions": versions(), "pool": pool_recs, "probe": probe_recs, "growth": summary,
        "notes": _notes(summary),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(result["notes"]))
    print(f"wrote {out}")


def _notes(s: dict) -> list[str]:
    lines = []
    for g in s["pool_rss"]:
        lines.append(f"pool {g['phase']}: peak RSS over baseline {g['mb_over_baseline']} MiB at {g['sizes']} prompts "
                     f"(~{g['bytes_per_prompt']:.0f} B/prompt; marginal {g['marginal_bytes_per_prompt']}: {g['shape']})"
                     if g["bytes_per_prompt"] is not None else f"pool {g['phase']}: {g['mb_over_baseline']} MiB")
    r = s["pool_python_heap_retained"]
    if r["bytes_per_prompt"] is not None:
        lines.append(f"pool: Python heap retained after writing pairs ~{r['bytes_per_prompt']:.0f} B/prompt "
                     "(the pool, its scores, the judge cache and the pairs: all O(pool) by design)")
    g = s["probe_rss"]
    if g["bytes_per_prompt"] is not None:
        lines.append(f"probe: peak RSS over baseline {g['mb_over_baseline']} MiB at {g['sizes']} prompts "
                     f"(marginal B/prompt {g['marginal_bytes_per_prompt']}: {g['shape']})")
    return lines


if __name__ == "__main__":
    main()

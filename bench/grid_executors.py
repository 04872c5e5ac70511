"""Grid executors: wall time of one small grid run by the local executor and by 2 Ray workers.

The grid: `weak`, `boundary` and `strong` x DPO x seeds 0 and 1, two iterations, the four
static/on-policy paths plus `auto` (30 cells; shared prefixes trained once either way) on the
synthetic world at `world.scale=small`, its initial policies SFT'd briefly (512 examples x 2
epochs, as in the tests) so that warming the cache takes seconds. Arms, each trial in a fresh
process on a fresh grid directory, alternating the order:

- `local-1`: the local executor (cells one after the other), one torch thread;
- `ray-2x1`: `--executor ray` on a local Ray instance with 2 CPUs, each cell a task with one
  torch thread, so two cells run at once where the task graph allows; the clock includes
  starting and stopping the instance and the workers' imports;
- `local-2` (only with `--local-2`): the local executor with two torch threads, i.e. the
  same cores used inside one cell instead of across cells (on a shared machine two threads per
  process oversubscribe the cores: see bench/README.md).

The driver imports the pipeline before its clock starts in every arm. The initial policies are
trained (cached) before the first trial. Every arm must give the same grid.json numbers as
`local-1` (recorded as `same_numbers`; two torch threads may differ in the last digits). Each
trial records the machine's 1-minute load average before it (other jobs sharing the cores).
Writes bench/results/grid_executors.json.

    python bench/grid_executors.py                  # 3 trials per arm
    python bench/grid_executors.py --repeats 1 --seeds 0 --local-2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import median, write_result  # noqa: E402

POLICIES = ["weak", "boundary", "strong"]
OVERRIDES = ["world.scale=small"] + [f"world.policies.{p}.{k}={v}" for p in POLICIES
                                     for k, v in (("examples", 512), ("epochs", 2), ("learning_rate", 0.005))]
ARMS = {"local-1": ("local", 1), "ray-2x1": ("ray", 1), "local-2": ("local", 2)}
WORKERS = 2


def grid_spec(policies: list[str], iterations: int, seeds: list[int]) -> dict:
    return {"policies": policies, "iterations": iterations, "paths": "all", "schedules": ["auto"], "seeds": seeds}


def trial(arm: str, out: Path, policies: list[str], iterations: int, seeds: list[int]) -> dict:
    """One timed grid run in this process (called in a fresh child per trial)."""
    executor, threads = ARMS[arm]
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    import stagealign.pipeline  # noqa: F401  (imported before the clock in every arm)
    from stagealign.config import load_config
    from stagealign.grid import parse_grid, run_grid
    from stagealign.training.common import quiet_libraries

    quiet_libraries()
    base = load_config(None, [f"run_dir={out}", *OVERRIDES])
    spec = parse_grid(grid_spec(policies, iterations, seeds))
    t0 = time.perf_counter()
    if executor == "ray":
        from stagealign.grid.ray_cluster import ray_session

        with ray_session(num_cpus=WORKERS):
            started = time.perf_counter() - t0
            run_grid(base, spec, out, executor="ray")
    else:
        started = 0.0
        run_grid(base, spec, out)
    seconds = time.perf_counter() - t0
    metrics = json.loads((out / "grid.json").read_text())
    metrics.pop("grid_dir")
    return {"arm": arm, "seconds": seconds, "ray_start_seconds": started, "torch_threads": threads,
            "cells": len(policies) * len(seeds) * (2 ** iterations + 1), "numbers": metrics}


def warm(policies: list[str]) -> None:
    """Train (cache) the initial policies, outside every clock."""
    from stagealign.config import load_config
    from stagealign.testbed.policies import initial_policy_dir
    from stagealign.testbed.world import World

    world = World(load_config(None, OVERRIDES).world)
    for p in policies:
        initial_policy_dir(world, p, log=lambda m: print(m, flush=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--local-2", action="store_true", help="add the local executor with 2 torch threads")
    ap.add_argument("--work", default="runs/bench/grid-executors", help="grid directories (removed first)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/grid_executors.json)")
    ap.add_argument("--trial", nargs=2, metavar=("ARM", "DIR"), help=argparse.SUPPRESS)  # a child's job
    args = ap.parse_args()
    if args.trial:
        res = trial(args.trial[0], Path(args.trial[1]), args.policies, args.iterations, args.seeds)
        print("RESULT " + json.dumps(res), flush=True)
        return
    warm(args.policies)
    arms = [a for a in ARMS if args.local_2 or a != "local-2"]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    trials = []
    for r in range(args.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            out = work / f"{arm}-{r}"
            load = os.getloadavg()[0]  # other jobs on the machine: 1-minute load average before the trial
            cmd = [sys.executable, __file__, "--trial", arm, str(out), "--iterations", str(args.iterations),
                   "--policies", *args.policies, "--seeds", *map(str, args.seeds)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{arm} trial {r} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(line[len("RESULT "):])
            res["repeat"], res["load_before"] = r, load
            trials.append(res)
            print(f"{arm:8s} trial {r}: {res['seconds']:.1f} s", flush=True)
    reference = next(t["numbers"] for t in trials if t["arm"] == "local-1")
    med = {a: median([t["seconds"] for t in trials if t["arm"] == a]) for a in arms}
    ray_start = median([t["ray_start_seconds"] for t in trials if t["arm"] == "ray-2x1"])
    payload = {
        "args": {"policies": args.policies, "seeds": args.seeds, "iterations": args.iterations,
                 "repeats": args.repeats, "overrides": OVERRIDES, "ray_workers": WORKERS,
                 "grid": grid_spec(args.policies, args.iterations, args.seeds)},
        "cells": trials[0]["cells"],
        "trials": [{k: v for k, v in t.items() if k != "numbers"} for t in trials],
        "median_seconds": med,
        "ray_start_seconds": ray_start,
        "speedup_ray_over_local_1": med["local-1"] / med["ray-2x1"],
        "same_numbers": {a: all(t["numbers"] == reference for t in trials if t["arm"] == a) for a in arms},
    }
    if "local-2" in med:
        payload["speedup_ray_over_local_2"] = med["local-2"] / med["ray-2x1"]
    path = write_result("grid_executors", payload, args.out)
    print(json.dumps({k: payload[k] for k in ("median_seconds", "ray_start_seconds", "same_numbers")}, indent=2))
    print(f"ray 2x1 vs local 1 thread: {payload['speedup_ray_over_local_1']:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()

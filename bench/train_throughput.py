"""Training: preference pairs per second and peak memory of one stagealign training iteration
against a plain TRL `DPOTrainer` with TRL's defaults, on the same tiny model and the same pairs.

Arms (each trial is a fresh child process, so its peak RSS (VmHWM) is its own):

* `ours`: `stagealign.training.preference.train_preference` with the run config's defaults
  (DPO, batch 32, float32 on CPU, reference log-probs precomputed once, no activation
  checkpointing).
* `trl`: `DPOTrainer(model, args=DPOConfig(output_dir=...), train_dataset=..., processing_class=tok)`
  with TRL's defaults. The settings that differ from a bare `DPOConfig(output_dir=...)` are listed
  in the result's `trl_settings_changed` with the reason (only what is needed to run the same
  epochs on this machine).
* `trl-batch32` (informative): the same plain TRL trainer with our batch size, to show how much
  of the ratio is the batch size and how much the rest.
* `ours-trl-tokenize` (informative): ours with TRL's own per-row tokenisation instead of
  `training.preference.tokenize_pairs`, i.e. stagealign before this benchmark.
* dtype check (`--dtype-pairs`, 0 to skip): on a 15.8M-parameter model, `ours-15m` (bf16 autocast
  where `training.preference.cpu_bf16_autocast` picks it: CPUs with native bf16) against
  `ours-15m-fp32` ($STAGEALIGN_CPU_BF16=0).

Pairs: max-min pairs of the synthetic world's static pool on the default scale's training prompts
(ground-truth judge), the `weak` initial policy (a 2-layer Llama, d=64). The clock runs from
building the trainer (tokenisation and the reference pass are part of an iteration) to the end
of `train()`; model loading is outside. Also recorded: the process's CPU time over the same span
(steadier than wall time on a shared machine) and the set-up part (tokenisation, reference pass). Trials alternate arm by arm, `--repeats` times; the
result has every trial, medians, and the ratio of medians ours / TRL.

    python bench/train_throughput.py --repeats 3
    python bench/train_throughput.py --pairs 256 --repeats 3 --arms ours trl   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import median, peak_rss_mb, rss_mb, write_result  # noqa: E402

ARMS = ("ours", "trl", "trl-batch32", "ours-trl-tokenize")
# The dtype check: a 15.8M-parameter model of the world's shape (hidden 512, 6 layers, random
# weights), ours as it decides on this CPU (`cpu_bf16_autocast`) vs forced float32.
DTYPE_ARMS = ("ours-15m", "ours-15m-fp32")
BIG = ["world.model.hidden_size=512", "world.model.layers=6", "world.model.heads=8",
       "world.model.intermediate_size=1024"]
# What the `trl` arm changes in a bare DPOConfig(output_dir=...), and why.
TRL_CHANGED = {
    "num_train_epochs": "set to ours (1.0) so both see every pair once (TRL's default is 3)",
    "use_cpu": "True: without a GPU, TRL's default bf16=True refuses to start unless use_cpu is set "
               "(bf16 itself is kept: it then runs as CPU autocast)",
    "report_to": "'none' (already the transformers 5 default; stated so no logger is started)",
}
# TRL defaults the `trl` arm keeps although they differ from ours (what a user of plain TRL gets).
TRL_KEPT = {
    "per_device_train_batch_size": 8, "learning_rate": 1e-6, "bf16": "True (TRL turns it on unless fp16)",
    "gradient_checkpointing": True, "precompute_ref_log_probs": False, "max_length": 1024,
    "lr_scheduler_type": "linear", "logging_steps": 10, "disable_dropout": True,
}


def make_pairs_file(path: Path, n_pairs: int) -> dict:
    from stagealign import artifacts
    from stagealign.config import load_config
    from stagealign.data.pairs import make_pairs, score_sets
    from stagealign.providers import build_provider

    cfg = load_config(None, ["policy.testbed=weak"])
    prov = build_provider(cfg, log=lambda m: None)
    sets = [prov.pool[p.id] for p in prov.train]
    score_sets(sets, prov.truth)
    pairs, dropped = make_pairs(sets, rule="max-min")
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    while len(rows) < n_pairs:  # more pairs than training prompts: repeat the list
        rows += rows[: n_pairs - len(rows)]
    rows = rows[:n_pairs]
    artifacts.write_jsonl(path, rows)
    return {"pairs": len(rows), "dropped": dict(dropped), "policy_dir": prov.initial_policy}


def child(arm: str, pairs_file: str, policy_dir: str, out: str, epochs: float) -> None:
    """One trial in this process; writes its record to `out`."""
    import torch

    from stagealign import artifacts
    from stagealign.config import load_config
    from stagealign.policy import load_policy
    from stagealign.training.preference import to_trl_rows, train_preference

    rows = list(artifacts.iter_jsonl(Path(pairs_file)))
    if arm in DTYPE_ARMS:
        from stagealign.testbed.policies import fresh_policy
        from stagealign.testbed.world import World

        if arm.endswith("fp32"):
            os.environ["STAGEALIGN_CPU_BF16"] = "0"
        policy = fresh_policy(World(load_config(None, ["policy.testbed=weak", *BIG]).world), seed=0)
    else:
        policy = load_policy(policy_dir)
    torch.manual_seed(0)
    rss0 = rss_mb()
    with tempfile.TemporaryDirectory() as work:
        t0, c0 = time.perf_counter(), time.process_time()
        if arm in ("ours", "ours-trl-tokenize", *DTYPE_ARMS):
            if arm == "ours-trl-tokenize":
                import stagealign.training.preference as pref

                pref.tokenize_pairs = lambda *a, **k: None  # TRL's per-row map runs
            cfg = load_config(None, ["policy.testbed=weak", f"training.epochs={epochs}"]).training
            res = train_preference(policy, rows, cfg, seed=0, work_dir=Path(work))
            steps, loss, train_s, bf16 = res.steps, res.final_loss, res.seconds, res.metrics.get("bf16")
        else:
            from datasets import Dataset
            from trl import DPOConfig, DPOTrainer

            extra = {"per_device_train_batch_size": 32} if arm == "trl-batch32" else {}
            args = DPOConfig(output_dir=str(Path(work) / "trl"), num_train_epochs=epochs, report_to="none",
                             use_cpu=True, **extra)
            trainer = DPOTrainer(model=policy.model, args=args, processing_class=policy.tokenizer,
                                 train_dataset=Dataset.from_list(to_trl_rows(policy, rows)))
            t1 = time.perf_counter()
            o = trainer.train()
            steps, loss, train_s = int(o.global_step), float(o.training_loss), time.perf_counter() - t1
            bf16 = bool(args.bf16)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = {"arm": arm, "seconds": seconds, "pairs": len(rows), "epochs": epochs, "steps": steps,
           "pairs_per_second": len(rows) * epochs / seconds, "cpu_seconds": cpu,
           "pairs_per_cpu_second": len(rows) * epochs / cpu, "setup_seconds": seconds - train_s,
           "train_loop_seconds": train_s, "bf16": bf16, "params": sum(p.numel() for p in policy.model.parameters()), "peak_rss_mb": peak_rss_mb(),
           "rss_before_mb": rss0, "final_loss": loss, "torch_threads": torch.get_num_threads()}
    rec["peak_rss_over_start_mb"] = rec["peak_rss_mb"] - rss0
    Path(out).write_text(json.dumps(rec))


def run_trial(arm: str, pairs_file: Path, policy_dir: str, epochs: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "rec.json"
        cmd = [sys.executable, __file__, "--child", arm, "--pairs-file", str(pairs_file), "--policy-dir", policy_dir,
               "--child-out", str(out), "--epochs", str(epochs)]
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0 or not out.is_file():
            raise RuntimeError(f"trial {arm} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--out", default=None, help="result file (default bench/results/train_throughput.json)")
    ap.add_argument("--dtype-pairs", type=int, default=256, help="pairs of the dtype check (0: skip it)")
    ap.add_argument("--child", choices=ARMS + DTYPE_ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--pairs-file", help=argparse.SUPPRESS)
    ap.add_argument("--policy-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        from stagealign.training.common import quiet_libraries

        if args.child.startswith("ours"):
            quiet_libraries()  # part of train_preference anyway
        child(args.child, args.pairs_file, args.policy_dir, args.child_out, args.epochs)
        return
    from stagealign.training.common import quiet_libraries

    quiet_libraries()
    t_start = time.time()
    with tempfile.TemporaryDirectory() as d:
        pairs_file = Path(d) / "pairs.jsonl"
        data = make_pairs_file(pairs_file, args.pairs)
        trials = []
        for r in range(args.repeats):
            for arm in (args.arms if r % 2 == 0 else list(reversed(args.arms))):
                rec = run_trial(arm, pairs_file, data["policy_dir"], args.epochs)
                rec["repeat"] = r
                trials.append(rec)
                print(f"repeat {r} {arm:17s} {rec['pairs_per_second']:8.1f} pairs/s  {rec['seconds']:6.1f} s (setup "
                      f"{rec['setup_seconds']:.1f}, CPU {rec['cpu_seconds']:.1f})  "
                      f"peak RSS {rec['peak_rss_mb']:.0f} MiB (+{rec['peak_rss_over_start_mb']:.0f})", flush=True)
        if args.dtype_pairs:
            from stagealign import artifacts

            small = Path(d) / "pairs-dtype.jsonl"
            artifacts.write_jsonl(small, list(artifacts.iter_jsonl(pairs_file))[: args.dtype_pairs])
            for r in range(args.repeats):
                for arm in (DTYPE_ARMS if r % 2 == 0 else DTYPE_ARMS[::-1]):
                    rec = run_trial(arm, small, data["policy_dir"], args.epochs)
                    rec["repeat"] = r
                    trials.append(rec)
                    print(f"repeat {r} {arm:17s} {rec['pairs_per_second']:8.1f} pairs/s  {rec['seconds']:6.1f} s "
                          f"(bf16 {rec['bf16']}, CPU {rec['cpu_seconds']:.1f})", flush=True)
    med = {}
    for arm in [*args.arms, *(DTYPE_ARMS if args.dtype_pairs else ())]:
        ts = [t for t in trials if t["arm"] == arm]
        med[arm] = {k: median([t[k] for t in ts]) for k in (
            "pairs_per_second", "seconds", "cpu_seconds", "pairs_per_cpu_second", "setup_seconds",
            "train_loop_seconds", "peak_rss_mb", "peak_rss_over_start_mb")}
        med[arm]["steps"] = ts[0]["steps"]
    ratios = {}
    for base in ("trl", "trl-batch32", "ours-trl-tokenize"):
        if "ours" in med and base in med:
            ratios[base] = {
                "pairs_per_second_ours_over_base": med["ours"]["pairs_per_second"] / med[base]["pairs_per_second"],
                "pairs_per_cpu_second_ours_over_base": med["ours"]["pairs_per_cpu_second"]
                / med[base]["pairs_per_cpu_second"],
                "peak_rss_base_over_ours": med[base]["peak_rss_mb"] / med["ours"]["peak_rss_mb"],
                "peak_rss_over_start_base_over_ours": med[base]["peak_rss_over_start_mb"]
                / max(med["ours"]["peak_rss_over_start_mb"], 1e-9),
            }
    if "ours-15m" in med:
        ratios["dtype_check"] = {
            "bf16_used": bool(next(t["bf16"] for t in trials if t["arm"] == "ours-15m")),
            "params": next(t["params"] for t in trials if t["arm"] == "ours-15m"),
            "pairs_per_second_auto_over_fp32": med["ours-15m"]["pairs_per_second"]
            / med["ours-15m-fp32"]["pairs_per_second"],
            "pairs_per_cpu_second_auto_over_fp32": med["ours-15m"]["pairs_per_cpu_second"]
            / med["ours-15m-fp32"]["pairs_per_cpu_second"],
        }
    goal = 1.3
    result = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("child") and k not in ("pairs_file",
                                                                                                 "policy_dir")},
        "data": data, "trl_settings_changed": TRL_CHANGED, "trl_defaults_kept": TRL_KEPT,
        "seconds_total": time.time() - t_start, "median": med, "ratios": ratios, "goal": goal,
        "goal_met": bool(ratios.get("trl", {}).get("pairs_per_second_ours_over_base", 0) >= goal),
        "trials": trials,
    }
    path = write_result("train_throughput", result, args.out)
    for base, r in ratios.items():
        if base == "dtype_check":
            print(f"dtype check ({r['params']:,} params, bf16 {r['bf16_used']}): "
                  f"{r['pairs_per_second_auto_over_fp32']:.2f}x pairs/s over float32")
            continue
        print(f"ours / {base}: {r['pairs_per_second_ours_over_base']:.2f}x pairs/s, peak RSS {base}/ours "
              f"{r['peak_rss_base_over_ours']:.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""On-policy sampling: the batched builder against one-prompt-at-a-time `generate`.

The naive baseline is what hand-written iterative-DPO scripts do: for each prompt, one
`model.generate(num_return_sequences=N)` call. `stagealign.generation.sample` batches
`batch_size` prompts per call (length-sorted, left-padded). Both run on the same policy, prompts
and settings in the same process, alternating, 3 repeats; the ratio of medians is reported.
Writes bench/results/sampling.json.

    python bench/sampling.py --prompts 256 --n 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import write_result  # noqa: E402

from stagealign.config import load_config
from stagealign.generation import sample
from stagealign.policy import load_policy
from stagealign.testbed.policies import initial_policy_dir
from stagealign.testbed.world import World
from stagealign.training.common import quiet_libraries


@torch.inference_mode()
def one_at_a_time(policy, prompts, n, max_new_tokens):
    tok, model = policy.tokenizer, policy.model
    out = []
    for p in prompts:
        enc = tok(policy.format(p), return_tensors="pt")
        gen = model.generate(**enc, do_sample=True, num_return_sequences=n, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.append(tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="result file (default bench/results/sampling.json)")
    args = ap.parse_args()
    quiet_libraries()
    cfg = load_config(None, ["policy.testbed=weak"])
    world = World(cfg.world)
    policy = load_policy(initial_policy_dir(world, "weak"))
    prompts = world.prompts("train")[: args.prompts]
    new = cfg.generation.max_new_tokens
    times = {"batched": [], "one_at_a_time": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        sample(policy, prompts, n=args.n, max_new_tokens=new, batch_size=args.batch_size, seed=r)
        times["batched"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        one_at_a_time(policy, prompts, args.n, new)
        times["one_at_a_time"].append(time.perf_counter() - t0)
    answers = args.prompts * args.n
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "threads": torch.get_num_threads(), "args": vars(args), "seconds": times,
        "answers_per_second": {k: answers / v for k, v in med.items()},
        "speedup_batched_over_one_at_a_time": med["one_at_a_time"] / med["batched"], "goal": 3.0,
    }
    result["goal_met"] = bool(result["speedup_batched_over_one_at_a_time"] >= result["goal"])
    print(f"wrote {write_result('sampling', result, args.out)}")
    print({k: round(v, 1) for k, v in result["answers_per_second"].items()},
          f"speed-up {result['speedup_batched_over_one_at_a_time']:.1f}x (goal >= 3x)")


if __name__ == "__main__":
    main()

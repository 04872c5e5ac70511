"""Peak memory of the KL's log-prob step at Llama-3's vocabulary: full logits (before) vs TRL's fused head (after).

The step `evaluate` runs for its KL estimate: the summed log-probabilities of 512-token answers
after 512-token prompts (1,024-token rows) at Llama-3's 128,256-entry vocabulary, under a
`LlamaForCausalLM` built from its config with a tiny body (hidden 64, 2 layers) so the vocabulary
dominates, on the CPU in float32. Each case runs in a fresh child process and records its peak
RSS (VmHWM, `_meta.peak_rss_mb`):

* baseline: the same imports, model and token ids, no log-prob step (subtracted from the others);
* before: the plain computation the KL used until now, reproduced here (`model(...).logits`, its
  float32 view, `log_softmax`, gather): batch x length x vocabulary floats three times (the
  logits, log_softmax's contiguous copy of the shifted slice, its output);
* after: `stagealign.logprobs.sequence_logprobs` (TRL's fused LM head, tiles of 4,096 positions x
  32,768 vocabulary entries).

Each case's step memory (peak minus the baseline's peak at the same batch) is compared with
`stagealign.memory.logprob_step`'s estimate for the same case (the CPU tile terms: no Triton).
`before` and `after` at the same batch also check that both give the same log-probabilities.

The preset's KL batch is 64 rows (`logprobs.BATCH_SIZE`); `before` at 64 rows would need ~100 GB
here (and ~84 GB in bfloat16 on a GPU), so it runs at 4 rows, `after` at 4 and 16 (its
memory does not grow with the batch beyond the hidden states; 64 rows take ~2 min of CPU alone on
2 cores). The JSON says so, with the estimator's figures at 64 rows.

    python bench/memory_real.py                      # ~2 min on 2 cores -> bench/results/memory_real.json
    python bench/memory_real.py --before 2 --after 2 --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _meta import peak_rss_mb, write_result  # noqa: E402

VOCAB = 128256  # Llama-3
LENGTH = 1024   # prompt + answer tokens per row
PROMPT = 512
PRESET_KL_BATCH = 64
MODEL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=LENGTH, tie_word_embeddings=False)


def _model_and_rows(rows: int):
    """The tiny-bodied Llama at Llama-3's vocabulary, and `rows` random 1,024-token rows."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL)).eval()
    ids = torch.randint(0, VOCAB, (rows, LENGTH), generator=torch.Generator().manual_seed(1)).tolist()
    return model, ids


def before(model, ids: list[list[int]]) -> list[float]:
    """The old computation of `logprobs.answer_logprobs`: full-vocabulary logits for the batch,
    upcast to float32, log-softmax, gather of the answer tokens."""
    import torch

    with torch.inference_mode():
        x = torch.tensor(ids)
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        return lp[:, PROMPT - 1:].double().sum(-1).tolist()


def after(model, ids: list[list[int]]) -> list[float]:
    from stagealign.logprobs import sequence_logprobs

    return sequence_logprobs(model, [r[:PROMPT] for r in ids], [r[PROMPT:] for r in ids])


def child(method: str, rows: int) -> dict:
    """One case in this (fresh) process: the same imports and inputs for every method."""
    import torch  # noqa: F401
    import trl.trainer.utils  # noqa: F401  (what `after` imports, so the baseline holds it too)

    import stagealign.logprobs  # noqa: F401

    model, ids = _model_and_rows(rows)
    t0 = time.perf_counter()
    step = {"before": before, "after": after}.get(method)  # the baseline runs no step
    out = step(model, ids) if step else []
    return {"method": method, "rows": rows, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "logprobs": out}


def _run(method: str, rows: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", method, str(rows)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} x {rows} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate_mb(method: str, rows: int, *, triton: bool = False, dtype_bytes: int = 4) -> float:
    """`memory.logprob_step` for this case (the tiny body's shape from its config), MiB."""
    from transformers import LlamaConfig

    from stagealign import memory

    shape = memory.shape_from_config(LlamaConfig(**MODEL).to_dict())
    terms = memory.logprob_step(shape, rows, LENGTH, dtype_bytes, fused=method == "after", triton=triton)
    return sum(terms.values()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=int, nargs="+", default=[4], help="batch sizes (rows) of the full-logits runs")
    ap.add_argument("--after", type=int, nargs="+", default=[4, 16], help="batch sizes (rows) of the fused-head runs")
    ap.add_argument("--out", default=None, help="default: bench/results/memory_real.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    t0 = time.perf_counter()
    sizes = sorted(set(args.before) | set(args.after))
    base = {rows: _run("baseline", rows) for rows in sizes}
    cases, sums = [], {}
    for method, batch in (("before", args.before), ("after", args.after)):
        for rows in batch:
            rec = _run(method, rows)
            sums[(method, rows)] = rec.pop("logprobs")
            step = rec["peak_rss_mb"] - base[rows]["peak_rss_mb"]
            est = estimate_mb(method, rows)
            rec.update(step_mb=round(step, 1), estimate_mb=round(est, 1), estimate_over_measured=round(est / step, 3),
                       baseline_peak_rss_mb=base[rows]["peak_rss_mb"])
            cases.append(rec)
            print(f"{method:>6} x {rows:>2} rows: peak RSS {rec['peak_rss_mb']:,.0f} MiB, step {step:,.0f} MiB, "
                  f"estimate {est:,.0f} MiB (x{est / step:.2f}), {rec['seconds']:.1f}s", flush=True)
    same = [r for r in sizes if ("before", r) in sums and ("after", r) in sums]
    agreement = {r: max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(sums[("after", r)], sums[("before", r)]))
                 for r in same}
    ratios = [c["estimate_over_measured"] for c in cases]
    preset = {m: round(estimate_mb(m, PRESET_KL_BATCH) / 1024, 2) for m in ("before", "after")}
    gpu = {m: round(estimate_mb(m, PRESET_KL_BATCH, triton=True, dtype_bytes=2) / 1024, 2) for m in ("before", "after")}
    result = {
        "args": {"before_rows": args.before, "after_rows": args.after, "length": LENGTH, "prompt": PROMPT,
                 "vocab": VOCAB, "model": MODEL, "dtype": "float32", "device": "cpu",
                 "preset_kl_batch": PRESET_KL_BATCH},
        "cases": cases,
        "max_relative_difference_after_vs_before": agreement,
        "estimate_over_measured": {"min": min(ratios), "max": max(ratios),
                                   "all_within_25_percent": all(0.75 <= r <= 1.25 for r in ratios)},
        "estimate_at_preset_kl_batch_gib": {"cpu_float32": preset, "gpu_bfloat16_triton": gpu},
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": [
            f"the preset's KL batch is {PRESET_KL_BATCH} rows; 'before' at {PRESET_KL_BATCH} rows would need "
            f"~{preset['before']:.0f} GiB here (float32) and ~{gpu['before']:.0f} GiB in bfloat16 on a GPU, so it runs "
            f"at {args.before} rows; 'after' runs at {args.after} rows to stay within ~3 min on 2 cores (its "
            f"estimate at {PRESET_KL_BATCH} rows: {preset['after']:.2f} GiB on CPU, {gpu['after']:.2f} GiB on a GPU)",
            "step = peak RSS minus the peak RSS of a baseline child with the same imports, model and inputs",
            "estimate = stagealign.memory.logprob_step (CPU: TRL's torch fold of 4 float32 tile copies, no Triton)",
        ],
    }
    path = write_result("memory_real", result, args.out)
    print(f"after vs before, max relative difference of the summed log-probs: {agreement}")
    print(f"estimate / measured: {min(ratios):.2f} .. {max(ratios):.2f}; wrote {path} in {result['seconds']}s")


if __name__ == "__main__":
    main()

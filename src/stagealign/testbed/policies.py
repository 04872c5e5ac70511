"""The world's initial policies: tiny real Llama models SFT'd on corpora of set quality.

Each named policy (weak / boundary / strong by default) is trained once per world and cached
under `$STAGEALIGN_CACHE` (default `~/.cache/stagealign`) keyed by the world's fingerprint, so
every run, test and grid cell starting from it starts from the same weights.

In a multi-process launch the SFT runs in a child process started as a plain single process:
inside the launch TRL's Trainer would train it with DDP across the ranks, i.e. other weights than
the single-process ones the cache key stands for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, set_seed

from stagealign import distributed
from stagealign.policy import Policy, load_policy
from stagealign.testbed.tokenizer import build_tokenizer
from stagealign.testbed.world import SEP, World

PROMPT_TEMPLATE = "{prompt} " + SEP


def cache_root() -> Path:
    return Path(os.environ.get("STAGEALIGN_CACHE", Path.home() / ".cache" / "stagealign"))


def fresh_policy(world: World, seed: int) -> Policy:
    """A randomly initialised model with the world's tokenizer (the pre-SFT 'base model')."""
    set_seed(seed)
    tok = build_tokenizer(world)
    m = world.cfg.model
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.heads,
        max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return Policy(model=LlamaForCausalLM(config), tokenizer=tok, prompt_template=PROMPT_TEMPLATE)


def initial_policy_dir(world: World, name: str, log=print) -> Path:
    """Path of the SFT'd policy `name`, training and caching it on first use."""
    if name not in world.cfg.policies:
        known = ", ".join(sorted(world.cfg.policies))
        raise ValueError(f"unknown testbed policy {name!r}; this world has: {known}")
    target = cache_root() / "worlds" / world.cfg.fingerprint() / name
    if (target / "model.safetensors").is_file():
        return target
    if distributed.launched():
        log(f"[testbed] SFT of initial policy {name!r} in a single-process child, cached in {target}")
        subprocess.run([sys.executable, "-m", "stagealign.testbed.policies", world.cfg.model_dump_json(), name],
                       env=distributed.single_process_env(), check=True)
        return target
    spec = world.cfg.policies[name]
    log(f"[testbed] SFT of initial policy {name!r} ({spec.examples} examples x {spec.epochs} epochs), cached in {target}")
    rng = np.random.default_rng(world.cfg.seed * 31 + 1)
    prompts = world.prompts("train")
    idx = rng.integers(0, len(prompts), size=spec.examples)
    chosen = [prompts[i] for i in idx]
    answers = world.write(spec.corpus, chosen, 1, rng)
    rows = [{"prompt": p, "completion": a[0]} for p, a in zip(chosen, answers)]
    policy = fresh_policy(world, seed=world.cfg.seed)
    with tempfile.TemporaryDirectory() as work:
        train_sft(policy, rows, epochs=spec.epochs, learning_rate=spec.learning_rate, batch_size=64,
                  seed=world.cfg.seed, work_dir=Path(work))
    policy.model.to(torch.float32)
    policy.save(target)
    return target


def load_initial_policy(world: World, name: str) -> Policy:
    return load_policy(initial_policy_dir(world, name))


from stagealign.training.sft import train_sft  # noqa: E402  (import late: training imports config)


if __name__ == "__main__":  # the single-process child of `initial_policy_dir` in a multi-process launch
    from stagealign.testbed.world import WorldConfig

    initial_policy_dir(World(WorldConfig.model_validate_json(sys.argv[1])), sys.argv[2])

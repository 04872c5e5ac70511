"""Tiny Hugging Face artifacts built offline for tests of the real-model path.

A word-level `PreTrainedTokenizerFast` (optionally with a chat template), a 1-layer
`LlamaForCausalLM` saved as safetensors, a generic JSONL pool, and `score`, a callable judge
(`judge.path: tiny_hf:score`; the tests directory is on sys.path under pytest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CHAT_TOKENS = ["<user>", "<assistant>", "<end>"]
WORDS = [f"w{i}" for i in range(24)]
GOOD = set(WORDS[:8])  # the judge likes these words

# Whitespace-separated so the word-level tokenizer sees every marker as one token.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<' + m['role'] + '> ' + m['content'] + ' <end> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}"
)


def build_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHAT_TOKENS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", model_max_length=128)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def save_policy_dir(path: Path, chat_template: str | None = None, seed: int = 0) -> Path:
    """A causal LM directory as a hub download would look: safetensors + tokenizer files."""
    tok = build_tokenizer(chat_template)
    model = build_model(tok, seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def prompt_text(i: int) -> str:
    return f"{WORDS[i % 24]} {WORDS[(7 * i + 3) % 24]} {WORDS[(5 * i + 11) % 24]}"


def write_generic_pool(path: Path, prompts: int = 40, answers: int = 4, seed: int = 0,
                       reversed_scores: bool = False, reference: str | None = None) -> Path:
    """`prompt` + `responses` + `models` rows (the generic pool format), distinct answers per prompt.

    `reversed_scores` adds a `scores` column that ranks the answers opposite to `score`, the judge;
    `reference` adds that reference answer to every prompt.
    """
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(prompts):
            responses = []
            while len(responses) < answers:
                a = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
                if a not in responses:
                    responses.append(a)
            row = {"prompt": prompt_text(i), "responses": responses, "models": [f"writer-{j}" for j in range(answers)]}
            if reversed_scores:
                row["scores"] = [-s for s in score([row["prompt"]] * answers, responses)]
            if reference is not None:
                row["reference"] = reference
            fh.write(json.dumps(row) + "\n")
    return path


def pairs(n: int = 16) -> list[dict]:
    """Preference rows: the chosen answer uses liked words, the rejected one does not."""
    good, bad = sorted(GOOD), [w for w in WORDS if w not in GOOD]
    return [{"prompt": prompt_text(i), "chosen": f"{good[i % 8]} {good[(i + 3) % 8]}",
             "rejected": f"{bad[i % 16]} {bad[(i + 5) % 16]}"} for i in range(n)]


def score(prompts: list[str], answers: list[str]) -> list[float]:
    """A callable judge: share of liked words, minus a small length penalty."""
    out = []
    for a in answers:
        words = a.split()
        out.append(sum(w in GOOD for w in words) / max(len(words), 1) - 0.05 * abs(len(words) - 3))
    return out


def quick_run(tmp_path: Path, *extra: str, prompts: int = 48) -> list[str]:
    """Overrides of a tiny real-model run: a saved tiny policy, a generic pool of `prompts` prompts,
    the `score` callable judge, no boundary probe and no KL (the tests that use it look elsewhere);
    `extra` overrides come last and win."""
    model = save_policy_dir(tmp_path / "sft")
    pool = write_generic_pool(tmp_path / "pool.jsonl", prompts=prompts)
    return [f"policy.model={model}", f"data.pool={pool}", "data.format=generic", "judge.kind=callable",
            "judge.path=tiny_hf:score", "data.eval_prompts=4", "generation.n=2", "generation.max_new_tokens=4",
            "boundary.enabled=false", "eval.kl=false", "training.batch_size=8", *extra]

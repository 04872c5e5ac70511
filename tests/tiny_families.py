"""Tiny random models of the preset families, a tiny PairRM and an UltraFeedback-shaped pool, offline.

Each family (Llama-3, Mistral/Zephyr, Phi-2, Qwen2.5, GPT-NeoX/Pythia) is a 2-layer model of that
architecture built from its config class (with the family's own quirks: grouped-query attention,
Qwen2's tied embeddings and qkv biases, Phi's partial rotary and biased head, NeoX's parallel
residual), saved as safetensors next to a tokenizer dressed as the family's: its special tokens,
bos / eos / pad, whether it prepends a bos, its chat template, and the generation config's eos ids
(two for Llama-3 and Qwen2.5, as they ship). The tokenizer is `tiny_hf.build_tokenizer`'s
word-level one, except Qwen2's, a byte-level BPE as the real one (see `_qwen2_tokenizer`).

`save_pairrm_dir` writes a tiny DeBERTa-v2 PairRM in the llm-blender/PairRM-hf layout (config with
the prefix ids, a DebertaV2Tokenizer with the <|source|> / <|candidate1|> / <|candidate2|> tokens),
loaded by `stagealign.judges.pairrm.PairRMJudge(path=...)` exactly as the hub checkpoint is.

`write_ultrafeedback_pool` writes rows in openbmb/UltraFeedback's field layout, with text made of
the tiny vocabulary so that every model and the judge read it without unknown tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import tiny_hf

#: Llama-3-8B-Instruct's chat template, as in its tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
#: HuggingFaceH4/mistral-7b-sft-beta's (Zephyr's) chat template.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}"
    "\n{{ '<|user|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
    "\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
#: Qwen2.5-Instruct's ChatML template (its tool-calling branches left out: no tools here).
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Family:
    """One architecture family: how to build its tiny model and dress its tokenizer."""

    name: str
    config_class: str  # a transformers config class
    config: dict  # the tiny sizes and the family's quirks
    specials: tuple[str, ...]  # special tokens added to the tiny vocabulary
    bos: str | None
    eos: str
    pad: str | None
    add_bos: bool  # does the tokenizer prepend bos to plain text (Llama, Mistral) or not (GPT-2 style, Qwen)
    eos_ids: tuple[str, ...]  # generation_config.json's eos tokens
    chat_template: str | None = None
    words: tuple[str, ...] = ()  # ordinary words of the family's prompt format
    model_max_length: int = 2048
    #: how a prompt "{prompt}" reaches the model when the tokenizer's chat template formats it
    chat_format: str | None = None
    extra: dict = field(default_factory=dict)  # tokenizer attributes beyond bos / eos / pad


_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
_NO_MAX = int(1e30)  # the "unset" model_max_length of hub tokenizers

FAMILIES: dict[str, Family] = {
    "llama": Family(
        "llama", "LlamaConfig",
        {**_SIZES, "intermediate_size": 64, "num_key_value_heads": 1, "max_position_embeddings": 8192,
         "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True,
        eos_ids=("<|end_of_text|>", "<|eot_id|>"), chat_template=LLAMA3_TEMPLATE, words=("user", "assistant"),
        model_max_length=_NO_MAX,
        chat_format=("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n")),
    "mistral": Family(
        "mistral", "MistralConfig",
        {**_SIZES, "intermediate_size": 64, "num_key_value_heads": 1, "max_position_embeddings": 32768,
         "sliding_window": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False},
        specials=("<|user|>", "<|assistant|>", "<|system|>"), bos="<s>", eos="</s>", pad=None, add_bos=True,
        eos_ids=("</s>",), chat_template=ZEPHYR_TEMPLATE, model_max_length=_NO_MAX,
        chat_format="<|user|>\n{prompt}</s>\n<|assistant|>\n"),
    "phi": Family(
        "phi", "PhiConfig",
        {**_SIZES, "intermediate_size": 128, "max_position_embeddings": 2048, "partial_rotary_factor": 0.4,
         "layer_norm_eps": 1e-5, "tie_word_embeddings": False},
        specials=("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False,
        eos_ids=("<|endoftext|>",), words=("Instruct:", "Output:"), extra={"unk_token": "<|endoftext|>"}),
    "qwen2": Family(
        "qwen2", "Qwen2Config",
        {**_SIZES, "intermediate_size": 64, "num_key_value_heads": 1, "max_position_embeddings": 32768,
         "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False},
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        add_bos=False, eos_ids=("<|im_end|>", "<|endoftext|>"), chat_template=QWEN_TEMPLATE,
        words=("system", "user", "assistant", *QWEN_SYSTEM.split()), model_max_length=131072,
        chat_format=f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{{prompt}}<|im_end|>\n"
                    "<|im_start|>assistant\n"),
    "gpt_neox": Family(
        "gpt_neox", "GPTNeoXConfig",
        {**_SIZES, "intermediate_size": 128, "max_position_embeddings": 2048, "rotary_pct": 0.25,
         "use_parallel_residual": True, "tie_word_embeddings": False},
        specials=("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False,
        eos_ids=("<|endoftext|>",), words=("###", "Instruction:", "Response:"), model_max_length=_NO_MAX,
        extra={"unk_token": "<|endoftext|>"}),
}

#: The preset's hub model -> the family of its tiny stand-in.
HUB_FAMILY = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama",
    "HuggingFaceH4/mistral-7b-sft-beta": "mistral",
    "microsoft/phi-2": "phi",
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen2",
    "EleutherAI/pythia-1.4b": "gpt_neox",
}


def family_tokenizer(fam: Family):
    """The family's tokenizer: `tiny_hf.build_tokenizer`'s word-level one with the family's specials,
    format words and bos / eos / pad, prepending bos to plain text only where the family's does;
    for Qwen2 a byte-level BPE (`_qwen2_tokenizer`)."""
    from tokenizers import AddedToken, processors

    if fam.name == "qwen2":
        return _qwen2_tokenizer(fam)
    tok = tiny_hf.build_tokenizer(fam.chat_template)
    tok.add_special_tokens({"additional_special_tokens": list(fam.specials)})
    tok.add_tokens([AddedToken(w, single_word=True) for w in fam.words if w not in tok.get_vocab()])
    tok.bos_token, tok.eos_token, tok.pad_token = fam.bos, fam.eos, fam.pad
    for attr, value in fam.extra.items():
        setattr(tok, attr, value)
    if fam.add_bos:
        bos = (fam.bos, tok.convert_tokens_to_ids(fam.bos))
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A $B", special_tokens=[bos])
    else:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    tok.model_max_length = fam.model_max_length
    return tok


def _qwen2_tokenizer(fam: Family):
    """A `Qwen2Tokenizer` (byte-level BPE, Qwen2's pre-tokenizer) with a few hundred tokens learnt
    from the tiny vocabulary. Not the word-level one: transformers 5 loads every qwen2 checkpoint's
    tokenizer as `Qwen2Tokenizer` whatever its tokenizer_config says, and rebuilds it as a BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [" ".join(tiny_hf.WORDS)] * 4 + [" ".join(fam.words)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    learnt = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=learnt["vocab"], merges=[tuple(m) for m in learnt["merges"]], unk_token=None,
                         bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad,
                         additional_special_tokens=[t for t in fam.specials if t not in (fam.eos, fam.pad)])
    tok.chat_template = fam.chat_template
    tok.model_max_length = fam.model_max_length
    return tok


def save_family_dir(path: Path, name: str, seed: int = 0) -> Path:
    """A hub-style directory of family `name`: safetensors weights, config, generation config, tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    fam = FAMILIES[name]
    tok = family_tokenizer(fam)
    ids = tok.convert_tokens_to_ids
    cfg = getattr(transformers, fam.config_class)(
        vocab_size=len(tok), bos_token_id=ids(fam.bos) if fam.bos else None, eos_token_id=ids(fam.eos),
        pad_token_id=ids(fam.pad) if fam.pad else None, **fam.config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    eos = [ids(t) for t in fam.eos_ids]
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0], pad_token_id=cfg.pad_token_id)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return Path(path)


# ---------------------------------------------------------------------------------------- PairRM
def save_pairrm_dir(path: Path, seed: int = 0) -> Path:
    """A tiny PairRM in the llm-blender/PairRM-hf layout: a DeBERTa-v2 encoder and the pairwise head,
    its config carrying the prefix token ids, and a DebertaV2Tokenizer (sentencepiece-style unigram
    over the tiny vocabulary, one character pieces as fallback) with the prefix tokens added."""
    import torch
    from transformers import DebertaV2Config, DebertaV2Tokenizer

    from stagealign.judges.pairrm import PREFIX_TOKENS, DebertaV2PairRM

    known = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [(t, 0.0) for t in known] + [("\u2581" + w, -2.0) for w in tiny_hf.WORDS + ["user", "assistant"]]
    pieces += [(ch, -8.0) for ch in "\u2581abcdefghijklmnopqrstuvwxyz0123456789<>|/:#"]
    tok = DebertaV2Tokenizer(vocab=pieces)
    tok.add_tokens(list(PREFIX_TOKENS))  # as llm-blender added them to deberta-v3's vocabulary
    source, cand1, cand2, cand = tok.convert_tokens_to_ids(list(PREFIX_TOKENS))
    config = DebertaV2Config(  # PairRM-hf's config.json, shrunk
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        relative_attention=True, position_buckets=64, max_relative_positions=-1, norm_rel_ebd="layer_norm",
        pos_att_type=["p2c", "c2p"], share_att_key=True, position_biased_input=False, type_vocab_size=0,
        max_position_embeddings=512, pad_token_id=0, initializer_range=0.3, n_tasks=1, drop_out=0.05,
        source_prefix_id=source, cand1_prefix_id=cand1, cand2_prefix_id=cand2, cand_prefix_id=cand,
        architectures=["DebertaV2PairRM"])
    torch.manual_seed(seed)
    DebertaV2PairRM(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return Path(path)


# ---------------------------------------------------------------------------------------- the pool
UF_MODELS = ["gpt-4", "llama-2-13b-chat", "wizardlm-7b", "falcon-40b-instruct"]
UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _completion(model: str, response: str, rating: int) -> dict:
    """One of an UltraFeedback row's `completions`, with every field the dataset has."""
    notes = {"Rating": str(rating), "Rationale": f"rated {rating} of 5"}
    annotations = {a: dict(notes) for a in UF_ASPECTS}
    for a in ("helpfulness", "truthfulness"):
        annotations[a].update({"Rationale For Rating": "short", "Type": ["1", "2"]})
    return {"annotations": annotations, "critique": f"critique of {model}", "custom_system_prompt": "Be helpful.",
            "fine-grained_score": float(rating), "model": model, "overall_score": 2.0 * rating,
            "principle": "helpfulness", "response": response}


def write_ultrafeedback_pool(path: Path, prompts: int = 40, seed: int = 0) -> Path:
    """`prompts` rows of openbmb/UltraFeedback's layout: source, instruction, models, completions
    [{model, response, annotations, fine-grained_score, overall_score, custom_system_prompt, principle,
    critique}], correct_answers, incorrect_answers; four distinct answers per prompt."""
    import numpy as np

    rng = np.random.default_rng(seed)
    instructions: dict[str, None] = {}
    while len(instructions) < prompts:  # distinct prompts: rows of one prompt would merge into one set
        instructions[" ".join(rng.choice(tiny_hf.WORDS, size=4))] = None
    with open(path, "w", encoding="utf-8") as fh:
        for instruction in instructions:
            answers: list[str] = []
            while len(answers) < len(UF_MODELS):
                a = " ".join(rng.choice(tiny_hf.WORDS, size=int(rng.integers(2, 7))))
                answers = answers if a in answers else [*answers, a]
            row = {"source": "evol_instruct", "instruction": instruction, "models": UF_MODELS,
                   "completions": [_completion(m, a, int(rng.integers(1, 6))) for m, a in zip(UF_MODELS, answers)],
                   "correct_answers": ["None"], "incorrect_answers": ["None"]}
            fh.write(json.dumps(row) + "\n")
    return Path(path)

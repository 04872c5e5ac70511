"""Estimated peak GPU memory per device of each stage of an iteration (pure: no torch, no network).

`--dry-run` prints the plan (`dryrun.py`); bench/memory_real.py checks the log-prob step's terms
against measured peaks. A stage's peak is a sum of named terms, in bytes (printed in GB = 1e9),
for one process holding everything (one GPU, or each GPU under DDP; ZeRO-3 and FSDP divide the
weights and optimizer states by the number of processes, which the plan leaves out):

* weights: parameters x bytes of `policy.dtype` (the checkpoint's own dtype for `auto`). The
  parameter count and sizes come from the model's config.json when it is a local directory, else
  from `HUB_SHAPES` (the presets' hub models and judge).
* resident policies: the pipeline keeps the initial policy loaded for the KL (`eval.kl`) besides
  the checkpoint in use, and drops both while training (`Run._release`), keeping only TRL's
  reference when `training.reference: initial` passes one.
* optimizer: LoRA trains float32 adapter weights (`lora_params`, for `all-linear`: every
  projection of every layer; an upper bound for a shorter target list) with a float32 gradient
  and two AdamW states each, 16 bytes a parameter; full fine-tuning adds a gradient and two AdamW
  states in the weights' dtype (12 bytes a parameter for float32 master weights).
* activations: tokens x hidden x bytes x a count of hidden-wide values per token. Training keeps
  `TRAIN_ATTENTION_VALUES` + the MLP's intermediates per layer for the backward (Korthikanti et
  al. 2022, "Reducing Activation Recomputation in Large Transformer Models": 34 bytes = 17 values
  at 16 bits for a GPT block; with SDPA/flash attention no sequence^2 scores are kept).
  Activation checkpointing keeps one hidden state per layer plus one layer's full set while it is
  recomputed. LoRA's dropout keeps a copy of each adapted projection's input. A no-grad forward
  holds `INFERENCE_BASE_VALUES` + its MLP's intermediates at its widest point. Training runs under
  bf16 autocast on the GPU (2 bytes).
* logits: never the full vocabulary for a batch. TRL's fused LM head (DPOTrainer's, and
  `logprobs.answer_logprobs` for the KL) projects `TILE_TOKENS` positions x `TILE_VOCAB`
  vocabulary entries at a time; on a GPU Triton folds the tile in place (one tile in the compute
  dtype; the backward recomputes a tile and accumulates a float32 hidden-state gradient), without
  Triton (CPU) torch ops hold `CPU_TILE_COPIES` float32 copies. `full_logits` is the plain
  computation, for comparison.
* reference: none with LoRA (the adapter disabled) or with `precompute_ref_log_probs` (the policy
  itself, scored before its first step: the precompute pass is a stage of its own); one copy of
  the weights for full fine-tuning without precomputation, or for `training.reference: initial`.
* KV cache for sampling: sequences x length x layers x 2 (key, value) x kv width x bytes, with
  every batch assumed as long as `training.max_length` (the longest batch of length-sorted
  prompts gets there); the prefill holds a no-grad forward over the prompts on top.
* judge: a model judge's weights stay loaded for the whole run; its forward over `batch_size`
  pairs of `max_length` tokens, with DeBERTa's eager attention (PairRM) holding
  `JUDGE_SCORE_COPIES` float32 score matrices of heads x length^2 per pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GB = 1e9

#: hidden-wide values per token per layer kept for the backward: 8 for attention and norms, then the
#: MLP's intermediate tensors (4 for a gated MLP: gate, up, activation, product; 2 otherwise), each
#: intermediate/hidden wide. A GPT block (intermediate 4x hidden) gives 16, Korthikanti et al.'s 17.
TRAIN_ATTENTION_VALUES = 8
#: hidden-wide values per token alive at the widest point of a no-grad forward: the residual stream
#: and its normed copy, plus 3 (gated: gate, up, activation) or 2 intermediate-wide MLP tensors
INFERENCE_BASE_VALUES = 2
#: TRL's fused LM head tiles (trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE and
#: trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16)
TILE_TOKENS = 4096
TILE_VOCAB = 32768
#: float32 tile-sized tensors alive at once in TRL's torch fold (no Triton): the projected tile, its
#: scaled copy, the shifted copy and its exponential
CPU_TILE_COPIES = 4
#: DeBERTa's disentangled attention: the content score, content->position and position->content
#: terms, each heads x length^2 float32 per pair
JUDGE_SCORE_COPIES = 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a transformer."""

    params: float
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_dim: int  # width of the keys (= of the values) per layer: key/value heads x head size
    gated_mlp: bool = True  # gate + up + down (Llama, Mistral, Qwen) or up + down (Phi-2, Pythia, DeBERTa)
    dtype_bytes: int = 2  # the checkpoint's own dtype, what `auto` loads

    @property
    def mlp_ratio(self) -> float:
        return self.intermediate / self.hidden


#: the presets' hub models and judge (their config.json files), for dry runs without a download
HUB_SHAPES: dict[str, Shape] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": Shape(8.03e9, 128256, 4096, 32, 14336, 32, 1024),
    "meta-llama/Meta-Llama-3-8B": Shape(8.03e9, 128256, 4096, 32, 14336, 32, 1024),
    "HuggingFaceH4/mistral-7b-sft-beta": Shape(7.24e9, 32000, 4096, 32, 14336, 32, 1024),
    "mistralai/Mistral-7B-v0.1": Shape(7.24e9, 32000, 4096, 32, 14336, 32, 1024),
    "microsoft/phi-2": Shape(2.78e9, 51200, 2560, 32, 10240, 32, 2560, gated_mlp=False),
    "Qwen/Qwen2.5-1.5B-Instruct": Shape(1.54e9, 151936, 1536, 28, 8960, 12, 256),
    "EleutherAI/pythia-1.4b": Shape(1.41e9, 50304, 2048, 24, 8192, 16, 2048, gated_mlp=False),
    # deberta-v3-large; the checkpoint's dtype is not recorded here: float32, the larger
    "llm-blender/PairRM-hf": Shape(0.435e9, 128100, 1024, 24, 4096, 16, 1024, gated_mlp=False, dtype_bytes=4),
}

#: model types whose MLP has no gate (config.json's `model_type`)
UNGATED = {"phi", "gpt_neox", "gpt2", "gptj", "opt", "bloom", "falcon", "deberta-v2", "bert", "roberta", "gpt_bigcode"}


def _first(config: dict, *keys, default=None):
    return next((config[k] for k in keys if config.get(k) is not None), default)


def shape_from_config(config: dict) -> Shape:
    """A `Shape` from a config.json mapping; the parameter count from the sizes it lists (embeddings,
    untied output layer, attention and MLP projections; norms and biases left out)."""
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_first(config, "num_attention_heads", "n_head"))
    head_dim = int(_first(config, "head_dim", default=hidden // heads))
    kv_dim = int(_first(config, "num_key_value_heads", default=heads)) * head_dim
    inter = int(_first(config, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden))
    vocab = int(config["vocab_size"])
    gated = config.get("model_type") not in UNGATED
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_dim
    mlp = (3 if gated else 2) * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    dtype = str(_first(config, "dtype", "torch_dtype", default="float32")).removeprefix("torch.")
    return Shape(float(embeddings + layers * (attention + mlp)), vocab, hidden, layers, inter, heads, kv_dim,
                 gated_mlp=gated, dtype_bytes=DTYPE_BYTES.get(dtype, 4))


def shape_of(model: str) -> Shape | None:
    """The shape of a local model directory (its config.json) or of a hub model in `HUB_SHAPES`;
    None when neither is known (the plan then says so instead of guessing)."""
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            return shape_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            return None
    return HUB_SHAPES.get(model)


# ---- terms -----------------------------------------------------------------------------------
def weights(shape: Shape, dtype_bytes: int) -> float:
    return shape.params * dtype_bytes


def lora_params(shape: Shape, r: int) -> float:
    """Adapter parameters of LoRA rank `r` on every linear projection of every layer (`all-linear`):
    r x (inputs + outputs) of q, k, v, o and of the MLP's 3 (gated) or 2 projections."""
    h, q = shape.hidden, shape.hidden
    attention = (h + q) * 2 + (h + shape.kv_dim) * 2
    mlp = (3 if shape.gated_mlp else 2) * (h + shape.intermediate)
    return float(r * shape.layers * (attention + mlp))


def optimizer(shape: Shape, dtype_bytes: int, lora_r: int | None) -> float:
    """Trainable state beyond the frozen weights: LoRA's float32 adapter + gradient + 2 AdamW states
    (16 bytes a parameter), or full fine-tuning's gradient + 2 AdamW states in the weights' dtype."""
    if lora_r is not None:
        return 16 * lora_params(shape, lora_r)
    return 3 * dtype_bytes * shape.params


def training_activations(shape: Shape, tokens: int, *, checkpointing: bool, lora_dropout: bool,
                         act_bytes: int = 2) -> float:
    """What the backward needs of the forward, for `tokens` tokens (chosen + rejected)."""
    per_layer = TRAIN_ATTENTION_VALUES + (4 if shape.gated_mlp else 2) * shape.mlp_ratio
    if lora_dropout:  # a dropped-out copy of each adapted projection's input: 4 attention, MLP in/out
        per_layer += 4 + (2 if shape.gated_mlp else 1) + shape.mlp_ratio
    unit = tokens * shape.hidden * act_bytes
    if checkpointing:
        return unit * (shape.layers + per_layer)
    return unit * per_layer * shape.layers


def inference_activations(shape: Shape, tokens: int, dtype_bytes: int) -> float:
    """The widest point of a no-grad forward over `tokens` tokens (one layer's MLP)."""
    return tokens * shape.hidden * dtype_bytes * (INFERENCE_BASE_VALUES + (3 if shape.gated_mlp else 2)
                                                   * shape.mlp_ratio)


def logits_tile(shape: Shape, compute_bytes: int, *, triton: bool = True, backward: bool = False) -> float:
    """TRL's fused LM head: one positions x vocabulary tile (a recomputed one too in the backward);
    without Triton, `CPU_TILE_COPIES` float32 copies of it."""
    tile = TILE_TOKENS * min(shape.vocab, TILE_VOCAB)
    if not triton:
        return tile * 4 * CPU_TILE_COPIES
    return tile * compute_bytes * (2 if backward else 1)


def full_logits(shape: Shape, tokens: int, dtype_bytes: int) -> float:
    """The plain log-prob computation, each tokens x vocabulary: the logits in the model's dtype, a
    contiguous float32 copy of all but the last position (`.float()` makes it, or for a float32
    model `log_softmax` of the strided slice does) and its log-softmax (bench/memory_real.py)."""
    return tokens * shape.vocab * (dtype_bytes + 4 + 4)


def kv_cache(shape: Shape, sequences: int, length: int, dtype_bytes: int) -> float:
    return float(sequences * length * shape.layers * 2 * shape.kv_dim * dtype_bytes)


def logprob_step(shape: Shape, rows: int, length: int, dtype_bytes: int, *, fused: bool = True,
                 triton: bool = True) -> dict[str, float]:
    """Memory of one log-prob batch beyond the weights (`logprobs.answer_logprobs`): the body's
    forward, its last hidden states (and the fused head's flattened copy of them), the logits."""
    tokens = rows * length
    terms = {"activations": inference_activations(shape, tokens, dtype_bytes)}
    if fused:
        terms["hidden states"] = 2.0 * tokens * shape.hidden * dtype_bytes
        terms["logits tile"] = logits_tile(shape, dtype_bytes, triton=triton)
    else:
        terms["logits"] = full_logits(shape, tokens, dtype_bytes)
    return terms


# ---- the plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeLoad:
    """A model judge as the plan sees it: its shape, dtype bytes, pairs per forward and tokens per pair."""

    shape: Shape
    dtype_bytes: int
    batch: int
    length: int
    eager_attention: bool = True


@dataclass(frozen=True)
class Stage:
    name: str
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in self.terms.items() if v >= 0.05 * GB)
        return f"{self.name} ~{self.total / GB:.1f} GB ({parts})"


@dataclass(frozen=True)
class Settings:
    """The run config's numbers the plan reads (dryrun.py fills it from the `RunConfig`)."""

    dtype_bytes: int
    lora_r: int | None
    lora_dropout: bool
    max_length: int
    train_batch: int
    checkpointing: bool
    precompute: bool
    precompute_batch: int
    reference_initial: bool
    kl: bool
    iterations: int
    gen_sequences: int  # generation.batch_size x generation.n
    max_new_tokens: int
    kl_batch: int


def plan(policy: Shape, s: Settings, judge: JudgeLoad | None = None) -> list[Stage]:
    """The stages' estimated peaks: sampling, judging, training (and TRL's reference precompute
    before it when on), the KL scoring of the evaluation."""
    w = weights(policy, s.dtype_bytes)
    judge_w = {"judge weights": weights(judge.shape, judge.dtype_bytes)} if judge is not None else {}
    # from iteration 2 on, the initial policy stays loaded for the KL next to the one sampled
    held = {"policy weights": w * (2 if s.kl and s.iterations > 1 else 1), **judge_w}
    prompt = max(s.max_length - s.max_new_tokens, 1)
    stages = [Stage("sampling", {**held,
                                 "KV cache": kv_cache(policy, s.gen_sequences, s.max_length, s.dtype_bytes),
                                 "prefill": inference_activations(policy, s.gen_sequences * prompt, s.dtype_bytes)})]
    if judge is not None:
        stages.append(Stage("boundary/judging", {**held, "judge forward": _judge_forward(judge)}))
    stages += _training(policy, s, w, judge_w)
    if s.kl:  # the evaluated checkpoint and the initial policy
        stages.append(Stage("KL/eval", {"policy weights": 2 * w, **judge_w,
                                        **logprob_step(policy, s.kl_batch, s.max_length, s.dtype_bytes)}))
    return stages


def _judge_forward(j: JudgeLoad) -> float:
    body = inference_activations(j.shape, j.batch * j.length, j.dtype_bytes)
    scores = j.batch * j.shape.heads * j.length ** 2 * 4 * JUDGE_SCORE_COPIES if j.eager_attention else 0.0
    return body + scores


def _training(policy: Shape, s: Settings, w: float, judge_w: dict[str, float]) -> list[Stage]:
    """The training stage, and TRL's precompute of the reference log-probs before it when on."""
    reference = w if s.reference_initial or (s.lora_r is None and not s.precompute) else 0.0
    base = {"policy weights": w, "reference": reference, **judge_w}
    tokens = 2 * s.train_batch * s.max_length  # chosen and rejected, concatenated
    out = [Stage("training", {
        **base, "optimizer": optimizer(policy, s.dtype_bytes, s.lora_r),
        "activations": training_activations(policy, tokens, checkpointing=s.checkpointing,
                                            lora_dropout=s.lora_r is not None and s.lora_dropout),
        "fused LM head": logits_tile(policy, 2, backward=True) + tokens * policy.hidden * 4})]
    if s.precompute:
        out.append(Stage("reference precompute", {
            **base, **logprob_step(policy, 2 * s.precompute_batch, s.max_length, s.dtype_bytes)}))
    return out

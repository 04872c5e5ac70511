"""Typed run configuration: YAML file + `a.b=c` overrides -> validated `RunConfig`.

Every section forbids unknown keys, because a typo in an alignment config (`beta` vs `betta`)
otherwise silently trains with the default and costs a day. Errors name the key, its location
and the closest valid name.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from stagealign import plugins
from stagealign.data.formats import Format, field_map
from stagealign.exports import EvalFormat
from stagealign.schedule import DEFAULT_RULE, KINDS, RULES


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PolicyConfig(_Section):
    """The initial policy: a named testbed policy, or any causal LM path / hub name."""

    testbed: str | None = Field(None, description="initial policy of the synthetic world: weak | boundary | strong")
    model: str | None = Field(None, description="local path or hub name of an AutoModelForCausalLM")
    tokenizer: str | None = Field(None, description="defaults to `model`")
    prompt_template: str | None = Field(
        None, description="plain prompt format with {prompt}; used when the tokenizer has no chat template")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    lora: LoraSettings | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "PolicyConfig":
        if (self.testbed is None) == (self.model is None):
            raise ValueError("set exactly one of policy.testbed (synthetic world) or policy.model (a HF model)")
        return self


class OnPolicyFile(_Section):
    """A file of on-policy candidates for one iteration, in any pool format (README: Pool formats)."""

    path: str
    format: Format = "auto"
    fields: dict[str, str] | None = None
    split: str = "train"
    scores: Literal["keep", "judge"] = Field("keep", description="keep: the file's scores are the judge's; "
                                                                 "judge: the run's judge scores the candidates")


class DataConfig(_Section):
    """Prompts and the static pool. With a testbed policy both come from the world."""

    pool: str | None = Field(None, description="static pool file / directory / hub dataset name")
    format: Format = Field("auto", description="the pool's row format (README: Pool formats); auto: detected "
                                               "from the first row, or mapped when data.fields is set")
    fields: dict[str, str] | None = Field(
        None, description="read any rows through a field mapping {target: field}; targets: prompt, answers (a "
                          "list per row) or answer (one per row), scores, models, id, reference")
    split: str = "train"
    keep_labels: bool = Field(False, description="keep the dataset's own ranking instead of re-ranking with the judge")
    train_prompts: int | None = Field(None, ge=1, description="cap on training prompts (default: all)")
    eval_prompts: int = Field(256, ge=1, description="evaluation prompts: held out from the pool, or drawn from "
                                                     "data.eval_pool when it has more")
    eval_pool: str | None = Field(
        None, description="a separate evaluation set (file / directory / hub name): AlpacaEval's or Arena-Hard's "
                          "prompts, or any `prompt` rows; its answer, if any, is the reference. The pool's prompts "
                          "are then only train + probe")
    eval_format: EvalFormat = Field("auto", description="data.eval_pool's rows: alpaca_eval, arena_hard, prompts; "
                                                        "auto: detected from the first row")
    eval_split: str = Field("train", description="data.eval_pool's split on the hub (tatsu-lab/alpaca_eval: eval)")
    iteration_prompts: Literal["disjoint", "same"] | None = Field(
        None, description="disjoint: each iteration trains on its own chunk of the training prompts (iterative "
                          "DPO pipelines do); same: every iteration on all of them. Default: the provider's "
                          "(disjoint for real pools, same for the synthetic world)")
    seed: int = Field(0, ge=0, description="draws the train / probe / eval split of a real pool, apart from the "
                                           "run seed, so a grid over run seeds evaluates on the same prompts")
    onpolicy_candidates: dict[int, str | OnPolicyFile] = Field(
        default_factory=dict, description="iteration -> on-policy candidates generated elsewhere (e.g. on your own "
                                          "vLLM cluster), used instead of sampling them for the prompts they cover")

    @field_validator("fields")
    @classmethod
    def _mapping(cls, fields: dict[str, str] | None) -> dict[str, str] | None:
        """The mapping's rules live with the formats (`formats.field_map`), not in a copy here."""
        if fields is not None:
            try:
                field_map(fields)
            except ValueError as exc:
                raise PydanticCustomError("data_fields", "{msg}",
                                          {"msg": str(exc).removeprefix("data.fields: ")}) from None
        return fields

    @model_validator(mode="after")
    def _mapped_format(self) -> "DataConfig":
        if self.fields is not None and self.format not in ("auto", "mapped"):
            raise PydanticCustomError("data_fields", "data.fields reads rows as format 'mapped'; drop "
                                      "data.format='{format}' or set it to mapped", {"format": self.format})
        if self.fields is None and self.format == "mapped":
            raise PydanticCustomError("data_fields", "data.format=mapped needs data.fields (which field "
                                      "holds the prompt, the answers, ...)", {})
        if self.eval_pool is None and self.eval_format != "auto":
            raise PydanticCustomError("data_eval", "data.eval_format='{format}' without data.eval_pool; name the "
                                      "evaluation set in data.eval_pool", {"format": self.eval_format})
        return self


class JudgeConfig(_Section):
    kind: str = Field("ground_truth", description="a judge kind of `stagealign.judges.registry` (plugins add kinds)")
    path: str | None = Field(None, description="model path / hub name, or 'module:function' for callable")
    temperature: float = Field(1.0, gt=0, description="Bradley-Terry temperature for scalar judges")
    batch_size: int = Field(32, ge=1)
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the judge")

    @field_validator("kind")
    @classmethod
    def _known(cls, name: str) -> str:
        """Kinds live in the judge registry (built-ins and plugins), not in a copy of their names here."""
        from stagealign.judges import registry

        known = registry.kinds()
        if name not in known:
            raise PydanticCustomError("judge_kind", "unknown judge kind '{kind}'; known: {known}",
                                      {"kind": name, "known": ", ".join(sorted(known))})
        return name


class GenerationConfig(_Section):
    n: int = Field(4, ge=2, le=64, description="on-policy samples per prompt")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(12, ge=1)
    batch_size: int = Field(128, ge=1, description="prompts per generate() call")
    backend: Literal["hf", "vllm"] = "hf"


class PairingConfig(_Section):
    rule: Literal["max-min", "max-random"] = "max-min"
    min_margin: float = Field(0.0, ge=0, description="drop pairs whose score margin is below this")


class TrainingConfig(_Section):
    method: Literal["dpo", "slic-hf", "ipo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="DPO's beta; SLiC-HF's hinge: 1 / margin (TRL's loss_type hinge)")
    ipo_tau: float | None = Field(
        None, gt=0, description="IPO's tau (TRL reads it as beta under loss_type ipo), used when method=ipo; "
                                "default: beta. Separate because IPO's good values are ~10x smaller than DPO's beta")
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the optimizer steps the learning rate warms up")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule after warmup (transformers' lr_scheduler_type)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: ~1/L of the activation memory for ~30% "
                           "more time; on for multi-billion-parameter models, off for the tiny testbed")
    weight_decay: float = Field(0.0, ge=0)
    max_length: int | None = Field(
        None, ge=8, description="truncate prompt+answer tokens (default: the policy's context length); TRL drops a "
                                "pair whose prompt alone fills it (counted in the train stage's metrics)")
    reference: Literal["previous", "initial"] = "previous"
    precompute_ref_log_probs: bool = True
    save_steps: int | None = Field(None, ge=1, description="write a training checkpoint every N optimizer steps, so "
                                   "a run killed while training resumes from the last one (default: none)")

    @property
    def precompute_batch_size(self) -> int:
        """Pairs per forward pass of TRL's reference precompute: no gradients there, so at least 64
        (fewer passes), the training batch when larger. The memory plan sizes that pass with it."""
        return max(self.batch_size, 64)


class BoundaryConfig(_Section):
    enabled: bool = Field(True, description="measure BS every iteration (needed by auto/blend; cheap otherwise)")
    probe_prompts: int = Field(256, ge=1, description="cap on probe prompts")
    samples: int = Field(2, ge=1, description="M on-policy answers per probe prompt")
    votes: Literal["soft", "hard"] = "soft"
    threshold: float = Field(0.5, gt=0, lt=1)
    level: float = Field(0.95, gt=0.5, lt=1)
    sequential: bool = True
    batch_prompts: int = Field(32, ge=1, description="probe prompts per sequential look")
    min_prompts: int = Field(32, ge=1)
    coverage_eps: float = Field(1e-3, gt=0, lt=1, description="rule coverage: a token below this probability "
                                "under the policy (at its position in a static answer) is one it cannot sample")
    coverage_share: float = Field(0.25, gt=0, le=1, description="rule coverage: static next when at least this "
                                  "share of probe prompts prefer a static answer holding such a token")


class ScheduleConfig(_Section):
    kind: Literal[KINDS] = "auto"  # type: ignore[valid-type]  (schedule.py owns the lists)
    rule: Literal[RULES] = Field(  # type: ignore[valid-type]
        DEFAULT_RULE, description="what auto decides by (stagealign.schedule: RULES)")
    path: str | None = Field(None, description="explicit path for kind=path, e.g. 'off,on'")
    first: Literal["static", "onpolicy"] = Field("static", description="auto's choice before anything is measured")
    blend_width: float = Field(0.2, gt=0, description="BS distance over which blend ramps from 0 to 1 on-policy")
    race_share: float = Field(0.05, gt=0, le=0.5, description="rule race: share of the iteration's training "
                              "prompts each of the two short copies trains on")
    race_budget: float = Field(0.15, gt=0, description="rule race: the most the race may spend beyond what the "
                               "iteration keeps (the loser's training, the head-to-head answers), as a share of "
                               "the iteration's training in policy token passes; the head to head stops before "
                               "a look that would overspend it (after one look at least)")

    @model_validator(mode="after")
    def _path(self) -> "ScheduleConfig":
        if self.kind == "path" and not self.path:
            raise ValueError("schedule.kind=path needs schedule.path, e.g. 'off,on'")
        return self


class EvalConfig(_Section):
    samples: int = Field(1, ge=1, description="answers per eval prompt")
    temperature: float = Field(1.0, gt=0)
    kl: bool = Field(True, description="estimate KL(policy || initial) on sampled answers")


class CoreRunConfig(_Section):
    """The run config without plugin sections; `RunConfig` adds them (e.g. the testbed's `world`)."""

    run_dir: str = "runs/run"
    seed: int = Field(0, ge=0)
    iterations: int = Field(2, ge=1, le=64)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(testbed="weak"))
    data: DataConfig = Field(default_factory=DataConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    boundary: BoundaryConfig = Field(default_factory=BoundaryConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "CoreRunConfig":
        if self.policy.model is not None and self.data.pool is None:
            raise ValueError("a HF policy (policy.model) needs a static pool (data.pool)")
        self._judge_fits_the_text()
        if self.schedule.kind == "path":
            from stagealign.schedule import parse_path

            n = len(parse_path(self.schedule.path or ""))
            if n < self.iterations:
                raise ValueError(f"schedule.path has {n} steps but iterations={self.iterations}")
        return self

    def _judge_fits_the_text(self) -> None:
        """A judge kind reads one provider's text (a reward model cannot score the world's tokens;
        the world's ground truth knows nothing of real answers); the registry says which."""
        from stagealign.judges import registry

        testbed = self.policy.testbed is not None
        fits = registry.fitting("testbed" if testbed else "real")
        if self.judge.kind not in fits:
            text = "the synthetic world's text" if testbed else "a real model's text"
            raise ValueError(f"{text} can only be judged by {', '.join(fits)} judges, not judge.kind={self.judge.kind}")


def _with_plugin_sections() -> type[CoreRunConfig]:
    """`CoreRunConfig` plus every installed plugin's sections, each with its own defaults, so a
    plugin section is validated, defaulted, dumped and overridden like a core one."""
    sections = {key: (model, Field(default_factory=model)) for key, model in plugins.config_sections().items()}
    clash = sorted(set(sections) & set(CoreRunConfig.model_fields))
    if clash:
        raise plugins.PluginError(f"plugin config sections {clash} clash with the core's")
    return create_model("RunConfig", __base__=CoreRunConfig, __module__=__name__,
                        __doc__="A whole run: the core sections and the installed plugins' sections.", **sections)


RunConfig = _with_plugin_sections()


# ---------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which
    would turn `schedule.path: on` into True."""


_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _container_defaults(model: type[BaseModel], prefix: tuple = ()) -> dict[tuple, Any]:
    """Default values of dict/list fields (e.g. world.policies, world.pool), by path.

    Sections that are models fill in their own defaults, but a partial entry of a dict or list
    field would replace the whole default container; overrides start from the default instead.
    """
    out: dict[tuple, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        origin = getattr(ann, "__origin__", None)
        if origin in (dict, list) and not field.is_required():
            default = field.get_default(call_default_factory=True)
            out[prefix + (name,)] = _dump(default)
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                   ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None)
        if sub is not None and origin is None:
            out.update(_container_defaults(sub, prefix + (name,)))
    return out


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    containers = _container_defaults(RunConfig)
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for depth, k in enumerate(keys[:-1]):
            path = tuple(keys[: depth + 1])
            if isinstance(node, list):
                node = _list_item(node, k, item)
                continue
            if k not in node or not isinstance(node[k], (dict, list)):
                node[k] = containers[path] if path in containers else {}
            node = node[k]
        if isinstance(node, list):
            idx = _index(keys[-1], node, item)
            node[idx] = value
        else:
            node[keys[-1]] = value
    return data


def _index(key: str, node: list, item: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {item!r}: {key!r} is not an index of a list of {len(node)} entries")
    return int(key)


def _list_item(node: list, key: str, item: str) -> Any:
    return node[_index(key, node, item)]


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at the location of an error (to suggest the closest one)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return []
        field = cur.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        cur = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                   ann)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] = RunConfig) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_fields(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(known)}" if known else "")
            lines.append(f"{source}: unknown key '{where}'{hint}")
        else:
            lines.append(f"{source}: {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The config file's top-level mapping (empty without a file) and the name errors should cite."""
    if path is None:
        return {}, "overrides"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = _yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
    return loaded, str(path)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (optional), apply overrides, validate. Raises ConfigError with a readable message."""
    data, source = read_yaml_mapping(path)
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------- sft
class SFTDataConfig(_Section):
    """The SFT dataset: chat rows (a `messages` column) or prompt-completion rows."""

    path: str = Field(..., description="local .jsonl / .json / .parquet file, a folder of them, a save_to_disk "
                                       "folder, or a hub dataset name org/name")
    split: str = "train"
    messages_column: str = Field("messages", description="column of chat turns [{role, content}, ...]")
    prompt_column: str = Field("prompt", description="prompt column, used when there is no messages column")
    completion_column: str = Field("completion", description="completion column, with prompt_column")
    max_rows: int | None = Field(None, ge=1, description="use only the first N rows")


class SFTTrainingConfig(_Section):
    """TRL `SFTTrainer` settings (full fine-tuning, or LoRA with `policy.lora`)."""

    learning_rate: float = Field(2e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1, description="per device")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int | None = Field(1024, ge=8, description="truncate each row to this many tokens, at most the "
                                                          "policy's context length (null: that length)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    assistant_only_loss: bool = Field(False, description="messages rows: loss on the assistant turns only (TRL's "
                                                         "assistant_only_loss); prompt-completion rows always train "
                                                         "on the completion only")


class SFTRunConfig(_Section):
    """`stagealign sft`: fine-tune a causal LM into the initial policy of a run (kept apart from
    `RunConfig`: an SFT job has no pool, judge or schedule)."""

    output_dir: str = Field("runs/sft", description="where the policy is saved (safetensors + tokenizer + format)")
    seed: int = Field(0, ge=0)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    policy: PolicyConfig = Field(..., description="the model to fine-tune: policy.model (+ tokenizer, prompt_template, "
                                                  "dtype, trust_remote_code, lora), as in a run config")
    chat_template: str | None = Field(None, description="a Jinja chat template (or a file holding one) for a "
                                                        "tokenizer without one; saved with the policy")
    data: SFTDataConfig
    training: SFTTrainingConfig = Field(default_factory=SFTTrainingConfig)

    @model_validator(mode="after")
    def _a_model(self) -> "SFTRunConfig":
        if self.policy.model is None:
            raise ValueError("stagealign sft fine-tunes policy.model (a path or hub name); the synthetic world "
                             "trains its own policies")
        return self


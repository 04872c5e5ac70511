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


class DataConfig(_Section):
    """Prompts and the static pool. With a testbed policy both come from the world."""

    pool: str | None = Field(None, description="static pool file / directory / hub dataset name")
    format: Literal["auto", "ultrafeedback", "binarized", "generic"] = "auto"
    split: str = "train"
    keep_labels: bool = Field(False, description="keep the dataset's own ranking instead of re-ranking with the judge")
    train_prompts: int | None = Field(None, ge=1, description="cap on training prompts (default: all)")
    eval_prompts: int = Field(256, ge=1)


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
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int | None = Field(None, ge=8, description="truncate prompt+answer tokens (default: the policy's context length)")
    reference: Literal["previous", "initial"] = "previous"
    precompute_ref_log_probs: bool = True


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


class ScheduleConfig(_Section):
    kind: Literal["auto", "static", "onpolicy", "path", "blend"] = "auto"
    path: str | None = Field(None, description="explicit path for kind=path, e.g. 'off,on'")
    first: Literal["static", "onpolicy"] = Field("static", description="auto's choice before anything is measured")
    blend_width: float = Field(0.2, gt=0, description="BS distance over which blend ramps from 0 to 1 on-policy")

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

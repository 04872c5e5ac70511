"""Check a run config before spending GPU hours on it, without downloading anything.

``validate(cfg)`` returns human-readable lines (what will run, warnings, estimated cost) and raises
`ConfigError` listing every real error at once: a local path that does not exist, a hub name that
is not ``org/name``, a judge option its class does not accept, an unreadable pool, an empty LoRA
target list, a prompt template without ``{prompt}``. Nothing is loaded from the network: hub names
are only checked for their form (they resolve at run time); local pools are opened to read their
first row only; judge options are checked against the judge class's signature, not by building it.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from stagealign.config import ConfigError, RunConfig

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LEGACY_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
HALF = ("bfloat16", "float16")
TESTBED_JUDGES = {"ground_truth": set(), "noisy": {"seed"}}


def validate(cfg: RunConfig, *, cuda: bool | None = None) -> list[str]:
    """Lines describing the run, its warnings and its estimated cost; ConfigError on real errors.

    `cuda` overrides the detection of a GPU (``torch.cuda.is_available()``).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    try:  # the config may have been built or changed in code since load_config validated it
        cfg = RunConfig.model_validate(cfg.model_dump())
    except Exception as exc:  # pydantic's ValidationError
        from pydantic import ValidationError

        from stagealign.config import format_validation_error

        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, "config")) from None
        raise
    c = _Checks()
    c.line(f"config: valid; run_dir {cfg.run_dir}, {cfg.iterations} iteration(s), schedule {cfg.schedule.kind}"
           + (f" ({cfg.schedule.path})" if cfg.schedule.path else "") + f", {cfg.training.method}, seed {cfg.seed}")
    _policy(cfg, c, cuda)
    pool_rows, answers = _pool(cfg, c)
    _judge(cfg, c)
    _generation(cfg, c, cuda)
    _cost(cfg, c, pool_rows, answers)
    if c.errors:
        n = len(c.errors)
        raise ConfigError(f"dry run: {n} problem{'s' if n > 1 else ''} in the config\n"
                          + "\n".join(f"  - {e}" for e in c.errors))
    return c.lines


class _Checks:
    def __init__(self):
        self.lines: list[str] = []
        self.errors: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(f"warning: {text}")

    def error(self, text: str) -> None:
        self.errors.append(text)


def looks_local(name: str) -> bool:
    """A path rather than a hub name: exists, starts like a path, or has more than one slash."""
    return (os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or "\\" in name or name.lower().endswith((".jsonl", ".json", ".parquet")))


def _source(key: str, name: str, c: _Checks, *, legacy: bool = False) -> tuple[str, Path | None]:
    """Check one model / data reference: ("local", path), ("hub", None) or ("error", None).

    `legacy` accepts hub model names without an organisation (the pool loader does not).
    """
    if looks_local(name):
        path = Path(os.path.expanduser(name))
        if not path.exists():
            hint = " (a hub name has one slash: 'org/name')" if name.count("/") > 1 and "\\" not in name else ""
            c.error(f"{key}: {name!r} looks like a local path but does not exist{hint}")
            return "error", None
        return "local", path
    if not HUB_NAME.match(name):
        if legacy and LEGACY_NAME.match(name):  # 'gpt2': old hub names without an org still resolve
            c.warn(f"{key}: {name!r} has no organisation; legacy hub names resolve, but 'org/name' is safer")
            return "hub", None
        c.error(f"{key}: {name!r} is neither an existing local path nor a hub name of the form 'org/name'")
        return "error", None
    return "hub", None


def _policy(cfg: RunConfig, c: _Checks, cuda: bool) -> None:
    p = cfg.policy
    if p.testbed is not None:
        if p.testbed not in cfg.world.policies:
            c.error(f"policy.testbed: {p.testbed!r} is not a policy of the synthetic world "
                    f"(known: {', '.join(sorted(cfg.world.policies))})")
        else:
            c.line(f"policy: synthetic world policy {p.testbed!r} (trained and cached on first use)")
    else:
        assert p.model is not None
        kind, local = _source("policy.model", p.model, c, legacy=True)
        if kind == "hub":
            c.line(f"policy.model: hub model {p.model} (not downloaded now; resolved at run time)")
        if local is not None:
            if not (local / "config.json").is_file():
                c.error(f"policy.model: {local} is not a model directory (no config.json)")
            elif not any(local.glob("*.safetensors")) and not (local / "model.safetensors.index.json").is_file():
                c.error(f"policy.model: {local} has no .safetensors weights "
                        "(only safetensors are loaded, never pickle)")
            else:
                c.line(f"policy.model: local model directory {local}")
        if p.tokenizer:
            _, tok = _source("policy.tokenizer", p.tokenizer, c, legacy=True)
            if tok is not None and not tok.is_dir():
                c.error(f"policy.tokenizer: {tok} is not a directory")
    if p.prompt_template is not None:
        try:
            p.prompt_template.format(prompt="x")
            ok = "{prompt}" in p.prompt_template
        except (KeyError, IndexError, ValueError) as exc:
            c.error(f"policy.prompt_template: {p.prompt_template!r} is not a valid format string ({exc!r}); "
                    "write literal braces as {{ }}")
            ok = True
        if not ok:
            c.error(f"policy.prompt_template: {p.prompt_template!r} has no {{prompt}} placeholder")
    if p.trust_remote_code:
        c.warn("policy.trust_remote_code=true runs Python code from the model repository")
    if p.lora is not None:
        targets = p.lora.target_modules
        if isinstance(targets, list) and (not targets or any(not str(t).strip() for t in targets)):
            c.error("policy.lora.target_modules: empty (or a blank entry); name modules, e.g. [q_proj, v_proj], "
                    "or use 'all-linear'")
        else:
            where = targets if isinstance(targets, str) else ", ".join(targets)
            c.line(f"policy.lora: r={p.lora.r} alpha={p.lora.alpha} dropout={p.lora.dropout} on {where}; "
                   "merged into the weights after every iteration")
    if p.dtype in HALF and not cuda:
        c.warn(f"policy.dtype={p.dtype} without a CUDA GPU: {p.dtype} on a CPU is slow (emulated on most CPUs); "
               "use policy.dtype=float32 here")
    if p.dtype in HALF and p.lora is None and cfg.training.learning_rate < 1e-4:
        c.warn(f"full fine-tuning with {p.dtype} weights and learning_rate {cfg.training.learning_rate:g}: "
               f"updates below {p.dtype}'s resolution are rounded away; keep policy.dtype=float32 (the "
               "trainer still computes in bfloat16 autocast on a GPU) or use LoRA")


def _pool(cfg: RunConfig, c: _Checks) -> tuple[int | None, int | None]:
    """(rows in a local pool when cheap to count, answers per prompt when known)."""
    d = cfg.data
    if cfg.policy.testbed is not None:
        n = len(cfg.world.pool)
        c.line(f"data: synthetic world prompts and its static pool ({n} writers per prompt)")
        return None, n
    assert d.pool is not None
    from stagealign.data.loaders import FORMATS, LoaderError, _iter_sources, detect_format

    if d.format != "auto" and d.format not in FORMATS:
        c.error(f"data.format: unknown format {d.format!r} (known: auto, {', '.join(FORMATS)})")
    answers = 4 if d.format == "ultrafeedback" else None
    kind, local = _source("data.pool", d.pool, c)
    if kind == "hub":
        c.line(f"data.pool: hub dataset {d.pool} [split {d.split}], format {d.format} "
               "(not downloaded now; resolved at run time)")
        if d.format == "auto":
            c.warn("data.format=auto on a hub dataset: the format is detected from its first row at run time")
    if local is None:
        return None, answers
    try:
        label, rows = next(iter(_iter_sources(str(local), d.split)))
        loc, first = next(iter(rows))
    except StopIteration:
        c.error(f"data.pool: {local} has no rows")
        return None, answers
    except (LoaderError, OSError, ValueError) as exc:
        c.error(f"data.pool: {exc}")
        return None, answers
    found = detect_format(first)
    if found is None:
        c.error(f"data.pool: {loc}: the first row (fields {sorted(first)}) matches no pool format "
                f"(ultrafeedback, binarized, generic)")
    elif d.format != "auto" and found != d.format:
        c.error(f"data.pool: {loc}: the first row looks like {found!r}, but data.format={d.format!r}")
    fmt = found or d.format
    if fmt == "ultrafeedback" and isinstance(first.get("completions"), list):
        answers = len(first["completions"])
    elif fmt == "generic" and isinstance(first.get("responses"), list):
        answers = len(first["responses"])
    count = _count_rows(local)
    c.line(f"data.pool: local {fmt} pool {local}" + (f", {count} rows" if count is not None else ""))
    return count, answers


def _count_rows(path: Path) -> int | None:
    try:
        if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
            with open(path, "rb") as fh:
                head = fh.read(1).lstrip()
            if path.suffix.lower() == ".json" and head == b"[":
                return len(json.loads(path.read_text(encoding="utf-8")))
            with open(path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        if path.is_file() and path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError):
        return None
    return None


def _judge(cfg: RunConfig, c: _Checks) -> None:
    j = cfg.judge
    from stagealign.judges.registry import known_kinds

    kinds = set(known_kinds()) | set(TESTBED_JUDGES)
    if j.kind not in kinds:
        c.error(f"judge.kind: unknown kind {j.kind!r} (known: {', '.join(sorted(kinds))})")
        return
    if j.kind in TESTBED_JUDGES:
        extra = sorted(set(j.options) - TESTBED_JUDGES[j.kind])
        if extra:
            c.error(f"judge.options: {extra} not accepted by the {j.kind} judge "
                    f"(accepted: {sorted(TESTBED_JUDGES[j.kind]) or 'none'})")
        else:
            c.line(f"judge: {j.kind} (the synthetic world's preference)")
        return
    from stagealign.providers import judge_spec

    key = "model" if j.kind == "openai" else "path"
    if j.path and key in j.options:
        c.error(f"judge: both judge.path and judge.options.{key} are set; keep one")
    spec = judge_spec(cfg)
    spec.pop("kind")
    target, name = _judge_target(j.kind)
    kwargs = dict(spec)
    if j.kind == "reward_model":
        if "path" not in kwargs and "path_or_name" not in kwargs:
            c.error("judge: kind reward_model needs judge.path (a local directory or hub name)")
            return
        if "path" in kwargs:
            kwargs["path_or_name"] = kwargs.pop("path")
    if j.kind == "openai" and "model" not in kwargs:
        c.error("judge: kind openai needs judge.path (or judge.options.model), the served model's name")
        return
    if j.kind == "callable" and "path" not in kwargs:
        c.error("judge: kind callable needs judge.path='package.module:function'")
        return
    bad = _unaccepted(target, kwargs)
    if bad:
        c.error(f"judge.options: {bad} for kind {j.kind} ({name}); accepted: {_params(target)}")
    what = spec.get("path_or_name") or spec.get("path") or spec.get("model")
    if j.kind in ("reward_model", "pairrm"):
        from stagealign.judges.pairrm import DEFAULT_PAIRRM

        what = str(what or DEFAULT_PAIRRM)
        _, local = _source("judge.path", what, c, legacy=True)
        if local is not None and not (local / "config.json").is_file():
            c.error(f"judge.path: {local} is not a model directory (no config.json)")
    elif j.kind == "callable":
        from stagealign.judges.base import load_callable

        try:
            load_callable(str(what))
        except ValueError as exc:
            c.error(f"judge.path: {exc}")
            return
    elif j.kind == "openai":
        base = str(spec.get("base_url", "https://api.openai.com/v1"))
        if not re.match(r"^https?://[^\s/]+", base):
            c.error(f"judge.options.base_url: {base!r} is not an http(s) URL")
        env = spec.get("api_key_env", "OPENAI_API_KEY")
        if env and not os.environ.get(env):
            c.warn(f"judge: the API key variable {env} is not set here; set it where the run starts "
                   "(or api_key_env: null for an endpoint without authentication)")
    if not bad:
        c.line(f"judge: {j.kind} ({what}); options accepted by {name}")


def _judge_target(kind: str) -> tuple[Any, str]:
    if kind == "reward_model":
        from stagealign.judges.reward_model import RewardModelJudge

        return RewardModelJudge, "RewardModelJudge"
    if kind == "pairrm":
        from stagealign.judges.pairrm import PairRMJudge

        return PairRMJudge, "PairRMJudge"
    if kind == "openai":
        from stagealign.judges.llm_api import OpenAIJudge

        return OpenAIJudge, "OpenAIJudge"

    def callable_judge(path: str, name: str | None = None, temperature: float = 1.0) -> None: ...

    return callable_judge, "CallableJudge"


def _params(target: Any) -> list[str]:
    return [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs", "transport")]


def _unaccepted(target: Any, kwargs: dict) -> str | None:
    try:
        inspect.signature(target).bind(**kwargs)
    except TypeError as exc:
        return str(exc)
    return None


def _generation(cfg: RunConfig, c: _Checks, cuda: bool) -> None:
    g = cfg.generation
    if g.backend == "vllm":
        import importlib.util

        from stagealign.generation.vllm import MISSING

        if importlib.util.find_spec("vllm") is None:
            c.error(MISSING)
        elif not cuda:
            c.warn("generation.backend=vllm needs a CUDA GPU at run time and none is visible here")
    if not cuda and cfg.policy.model is not None:
        c.warn("no CUDA GPU here: sampling and training a real model on CPU is only practical for tiny models")


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _cost(cfg: RunConfig, c: _Checks, pool_rows: int | None, answers: int | None) -> None:
    """Upper bounds per iteration and for the run (sequential probing usually stops earlier)."""
    b, g, t, d = cfg.boundary, cfg.generation, cfg.training, cfg.data
    iters = cfg.iterations
    if cfg.policy.testbed is not None:
        from stagealign.testbed.world import World

        world = World(cfg.world)
        n_train = len(world.prompts("train"))
        n_probe = min(b.probe_prompts, len(world.prompts("probe")))
        n_eval = min(d.eval_prompts, len(world.prompts("eval")))
        if d.train_prompts:
            n_train = min(n_train, d.train_prompts)
        approx = ""
    else:
        n_eval = n_probe = None
        n_train = d.train_prompts
        approx = ""
        if pool_rows is not None:  # the provider holds out up to 10% each for eval and probe
            n_eval = min(d.eval_prompts, max(1, pool_rows // 10))
            n_probe = min(b.probe_prompts, max(1, pool_rows // 10))
            rest = max(pool_rows - n_eval - n_probe, 0)
            n_train = min(n_train, rest) if n_train else rest
            approx = "about "
        else:
            n_probe = b.probe_prompts
            n_eval = d.eval_prompts
    k = answers
    on_steps = _onpolicy_iterations(cfg)
    probe_gen = n_probe * b.samples if b.enabled else 0
    c.line(f"cost: boundary score, per iteration: up to {_fmt(probe_gen)} generations "
           f"({n_probe} probe prompts x {b.samples})"
           + (f", {_fmt(probe_gen * k)} judge comparisons (x {k} pool answers)" if k else "")
           + ("; sequential probing stops earlier when the interval clears the threshold" if b.sequential else ""))
    if n_train is None:
        c.line(f"cost: on-policy build, per iteration: N x {g.n} generations for N training prompts "
               "(all pool prompts not held out; data.train_prompts caps N)")
        c.line(f"cost: training, per iteration: N x {t.epochs:g} / {t.batch_size * t.gradient_accumulation_steps} "
               "optimizer steps")
        c.line(f"cost: whole run, at most {iters} x ({_fmt(probe_gen)} + N x {g.n}) policy generations "
               f"+ {iters + 1} x {_fmt(n_eval * cfg.eval.samples)} for evaluation, "
               f"each up to {g.max_new_tokens} new tokens")
        return
    on_gen = n_train * g.n
    judge_on = n_train * (g.n * (g.n - 1) // 2 if _pairwise(cfg) else g.n)
    steps = math.ceil(n_train * t.epochs / (t.batch_size * t.gradient_accumulation_steps))
    c.line(f"cost: on-policy build, per on-policy iteration: {approx}{_fmt(on_gen)} generations "
           f"({approx}{_fmt(n_train)} training prompts x {g.n}), {approx}{_fmt(judge_on)} judge "
           + ("comparisons" if _pairwise(cfg) else "scores"))
    if k and not (cfg.data.keep_labels and cfg.policy.testbed is None):
        judge_off = n_train * (k * (k - 1) // 2 if _pairwise(cfg) else k)
        c.line(f"cost: static build, per static iteration: {approx}{_fmt(judge_off)} judge "
               + ("comparisons" if _pairwise(cfg) else "scores") + f" ({k} pool answers per prompt)")
    c.line(f"cost: training, per iteration: {approx}{_fmt(steps)} optimizer steps "
           f"({_fmt(n_train)} pairs at most x {t.epochs:g} epoch(s) / "
           f"{t.batch_size} x {t.gradient_accumulation_steps})")
    total = iters * probe_gen + on_steps * on_gen + (iters + 1) * n_eval * cfg.eval.samples
    c.line(f"cost: whole run, at most {approx}{_fmt(total)} policy generations ({iters} x {_fmt(probe_gen)} probe "
           f"+ {on_steps} on-policy iteration(s) x {_fmt(on_gen)} + {iters + 1} x {_fmt(n_eval * cfg.eval.samples)} "
           f"eval), each up to {g.max_new_tokens} new tokens")


def _pairwise(cfg: RunConfig) -> bool:
    return cfg.judge.kind in ("pairrm", "openai")


def _onpolicy_iterations(cfg: RunConfig) -> int:
    """Iterations that may sample on-policy candidates (an upper bound for auto and blend)."""
    s = cfg.schedule
    if s.kind == "static":
        return 0
    if s.kind == "path" and s.path:
        from stagealign.schedule import parse_path

        return sum(x != "static" for x in parse_path(s.path)[: cfg.iterations])
    return cfg.iterations


def main(argv: list[str] | None = None) -> int:
    """``python -m stagealign.dryrun CONFIG.yaml [key=value ...]``: print the lines, exit 1 on errors."""
    import sys

    from stagealign.config import load_config

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m stagealign.dryrun CONFIG.yaml [key.sub=value ...]")
        return 0 if args else 2
    try:
        lines = validate(load_config(args[0], args[1:]))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

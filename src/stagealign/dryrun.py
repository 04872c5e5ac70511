"""Check a run config before spending GPU hours on it, without downloading anything.

``validate(cfg)`` returns human-readable lines (what will run, warnings, estimated cost) and raises
`ConfigError` listing every real error at once: a local path that does not exist, a hub name that
is not ``org/name``, a judge option its class does not accept, an unreadable pool, an empty LoRA
target list, a prompt template without ``{prompt}``. Nothing is loaded from the network: hub names
are only checked for their form (they resolve at run time); local pools are opened to read their
first row only; judge options are checked against the judge class's signature, not by building it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from stagealign import plugins
from stagealign.config import ConfigError, RunConfig
from stagealign.hub import HUB_NAME, LEGACY_NAME, looks_local
from stagealign.schedule import races

HALF = ("bfloat16", "float16")


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
    plan = _plan(cfg)
    _policy(cfg, c, cuda, plan)
    pool_rows, answers = _pool(cfg, c, plan)
    _eval_pool(cfg, c, plan)
    _judge(cfg, c)
    _generation(cfg, c, cuda)
    _memory(cfg, c, cuda)
    _cost(cfg, c, pool_rows, answers, plan)
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


def _plan(cfg: RunConfig) -> plugins.DryRunPlan | None:
    """What the plugin providing this run (the synthetic world, for `policy.testbed`) says about
    it: its lines, errors and split sizes. None for a Hugging Face run, checked here instead."""
    if cfg.policy.testbed is None:
        return None
    plugin = plugins.provider("testbed")
    return plugin.dry_run(cfg) if plugin.dry_run else plugins.DryRunPlan()


def _policy(cfg: RunConfig, c: _Checks, cuda: bool, plan: plugins.DryRunPlan | None) -> None:
    p = cfg.policy
    if plan is not None:
        c.lines += plan.lines
        c.errors += plan.errors
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


def _pool(cfg: RunConfig, c: _Checks, plan: plugins.DryRunPlan | None) -> tuple[int | None, int | None]:
    """(rows in a local pool when cheap to count, answers per prompt when known)."""
    d = cfg.data
    if plan is not None:  # the plugin described its data with its other lines
        return None, plan.answers_per_prompt
    assert d.pool is not None
    from stagealign.data.formats import RowReader, detect_format, field_map
    from stagealign.data.sources import LoaderError, count_rows, iter_sources

    answers = 4 if d.format == "ultrafeedback" else None
    kind, local = _source("data.pool", d.pool, c)
    if kind == "hub":
        c.line(f"data.pool: hub dataset {d.pool} [split {d.split}], format {d.format} "
               "(not downloaded now; resolved at run time)")
        if d.format == "auto" and d.fields is None:
            c.warn("data.format=auto on a hub dataset: the format is detected from its first row at run time")
    if local is None:
        return None, answers
    try:
        label, rows = next(iter(iter_sources(str(local), d.split)))
        loc, first = next(iter(rows))
    except StopIteration:
        c.error(f"data.pool: {local} has no rows")
        return None, answers
    except (LoaderError, OSError, ValueError) as exc:
        c.error(f"data.pool: {exc}")
        return None, answers
    try:  # the loader's own first-row check: the same rules and the same one-line message
        reader = RowReader.for_first_row(first, loc, d.format, prompt_field=None, id_field=None, score_field=None,
                                         fields=field_map(d.fields) if d.fields is not None else None)
    except LoaderError as exc:
        found = detect_format(first)
        if d.format not in ("auto", "mapped") and found is not None:
            c.error(f"data.pool: {loc}: the first row looks like {found!r}, but data.format={d.format!r}")
        else:
            c.error(f"data.pool: {exc}")
        return None, answers
    fm = reader.fields
    if reader.format == "ultrafeedback" and isinstance(first.get("completions"), list):
        answers = len(first["completions"])
    elif fm is not None and fm.answers is not None and isinstance(first.get(fm.answers), list):
        answers = len(first[fm.answers])
    count = count_rows(local)
    c.line(f"data.pool: local {reader.format} pool {local}" + (f", {count} rows" if count is not None else ""))
    return count, answers


def _eval_pool(cfg: RunConfig, c: _Checks, plan: plugins.DryRunPlan | None) -> None:
    """`data.eval_pool` as `_pool` checks `data.pool`: a local set's first row must be one of the
    evaluation formats (`exports.eval_format_of`, the loader's own check and message)."""
    d = cfg.data
    if d.eval_pool is None:
        return
    if plan is not None:
        c.warn("data.eval_pool is not read for a synthetic-world policy: the world evaluates on its own prompts")
        return
    from stagealign.data.sources import LoaderError, count_rows, iter_sources
    from stagealign.exports import eval_format_of

    kind, local = _source("data.eval_pool", d.eval_pool, c)
    if kind == "hub":
        c.line(f"data.eval_pool: hub dataset {d.eval_pool} [split {d.eval_split}], format {d.eval_format} "
               "(not downloaded now; resolved at run time)")
    if local is None:
        return
    try:
        loc, first = next(iter(next(iter(iter_sources(str(local), d.eval_split)))[1]))
        fmt = eval_format_of(first, loc, d.eval_format)
    except StopIteration:
        c.error(f"data.eval_pool: {local} has no rows")
        return
    except (LoaderError, OSError, ValueError) as exc:
        c.error(f"data.eval_pool: {exc}")
        return
    count = count_rows(local)
    c.line(f"data.eval_pool: local {fmt} evaluation set {local}" + (f", {count} rows" if count is not None else "")
           + "; the pool's prompts are train and probe only")
    if count is not None and count > d.eval_prompts:
        c.warn(f"data.eval_pool: evaluating on {d.eval_prompts} of its {count} prompts (data.eval_prompts); "
               f"data.eval_prompts={count} evaluates on all of them")


def _judge(cfg: RunConfig, c: _Checks) -> None:
    """The registry checks the options against the kind's signature; then what the kind reads
    (a model path, a callable, an endpoint) is checked without loading it."""
    from stagealign.judges import registry

    j = cfg.judge
    kind = registry.kind(j.kind)  # known: the config was validated
    if j.path and kind.path_key in j.options:
        c.error(f"judge: both judge.path and judge.options.{kind.path_key} are set; keep one")
    spec = registry.spec_from_config(j)
    problem = registry.check_options(spec)
    if problem:
        c.error(problem)
    try:
        opts = registry.options_with_defaults(spec)
    except ValueError:  # one option under two names: reported above
        return
    what = opts.get(kind.path_param) if kind.path_param else None
    if kind.path_param and what is None:  # a missing model / callable: reported above
        return
    if j.kind in ("reward_model", "pairrm"):
        _, local = _source("judge.path", str(what), c, legacy=True)
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
        _endpoint(opts, c)
    if not problem:
        c.line(f"judge: {j.kind} ({kind.about})" if what is None
               else f"judge: {j.kind} ({what}); options accepted by {registry.label(kind)}")


def _endpoint(opts: dict, c: _Checks) -> None:
    """An OpenAI-compatible judge: a well-formed URL, and its key variable set (a warning: the run
    may start elsewhere)."""
    base = str(opts.get("base_url"))
    if not re.match(r"^https?://[^\s/]+", base):
        c.error(f"judge.options.base_url: {base!r} is not an http(s) URL")
    env = opts.get("api_key_env")
    if env and not os.environ.get(env):
        c.warn(f"judge: the API key variable {env} is not set here; set it where the run starts "
               "(or api_key_env: null for an endpoint without authentication)")


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


#: the GPU the presets are sized for, when no GPU is visible to compare with
TARGET_GPU_GB = 80
#: the sequence length the memory plan assumes when training.max_length is unset (the pipeline
#: then uses the policy's context, unknown before it is loaded)
PLAN_LENGTH = 2048


def memory_plan(cfg: RunConfig):
    """The estimated peak GPU memory of each stage (`memory.plan`), or None for a synthetic-world
    policy or a model whose size is unknown here (neither a local directory nor in `HUB_SHAPES`)."""
    from stagealign import memory

    p, t, g = cfg.policy, cfg.training, cfg.generation
    shape = memory.shape_of(p.model) if p.model else None
    if shape is None:
        return None
    from stagealign.logprobs import BATCH_SIZE

    settings = memory.Settings(
        dtype_bytes=memory.DTYPE_BYTES.get(p.dtype, shape.dtype_bytes), lora_r=p.lora.r if p.lora else None,
        lora_dropout=bool(p.lora and p.lora.dropout > 0), max_length=t.max_length or PLAN_LENGTH,
        train_batch=t.batch_size, checkpointing=t.gradient_checkpointing, precompute=t.precompute_ref_log_probs,
        precompute_batch=t.precompute_batch_size, reference_initial=t.reference == "initial" and cfg.iterations > 1,
        kl=cfg.eval.kl, iterations=cfg.iterations, gen_sequences=g.batch_size * g.n,
        max_new_tokens=g.max_new_tokens, kl_batch=BATCH_SIZE)
    return memory.plan(shape, settings, _judge_load(cfg))


def _judge_load(cfg: RunConfig):
    """A model judge's shape and batch as the memory plan needs them; None for judges that load no
    model here (callables, endpoints) or whose size is unknown."""
    from stagealign import memory
    from stagealign.judges import registry

    if cfg.judge.kind not in ("pairrm", "reward_model"):
        return None
    try:
        opts = registry.options_with_defaults(registry.spec_from_config(cfg.judge))
    except ValueError:
        return None
    shape = memory.shape_of(str(opts.get(registry.kind(cfg.judge.kind).path_param)))
    if shape is None:
        return None
    dtype = str(opts.get("dtype") or "auto").removeprefix("torch.")
    return memory.JudgeLoad(shape, memory.DTYPE_BYTES.get(dtype, shape.dtype_bytes), int(opts.get("batch_size", 1)),
                            int(opts.get("max_length", 512)), eager_attention=cfg.judge.kind == "pairrm")


def _memory(cfg: RunConfig, c: _Checks, cuda: bool) -> None:
    """Print the memory plan, and warn about a stage that would not fit the GPU here (or, without
    one, the 80 GB the presets are sized for)."""
    from stagealign.memory import GB

    if cfg.policy.model is None:
        return
    stages = memory_plan(cfg)
    if stages is None:
        c.line(f"memory: no estimate: the size of {cfg.policy.model} is unknown here (not a local model "
               "directory nor a hub model of stagealign.memory.HUB_SHAPES)")
        return
    limit, where = TARGET_GPU_GB, f"an {TARGET_GPU_GB} GB GPU"
    if cuda:
        import torch

        if torch.cuda.is_available():  # not when a test only says there is one
            limit, where = torch.cuda.get_device_properties(0).total_memory / GB, "this GPU"
    length = "" if cfg.training.max_length else f", {PLAN_LENGTH} tokens assumed for training.max_length"
    c.line(f"memory: estimated peak GPU memory per device, GB (stagealign/memory.py{length}):")
    for stage in stages:
        c.line(f"memory:   {stage.line()}")
        if stage.total / GB > limit:
            c.warn(f"memory: the {stage.name} stage needs ~{stage.total / GB:.0f} GB, more than {where} "
                   f"({limit:.0f} GB); lower the batch sizes (training.batch_size with more "
                   "gradient_accumulation_steps, generation.batch_size) or turn on training.gradient_checkpointing")


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _cost(cfg: RunConfig, c: _Checks, pool_rows: int | None, answers: int | None,
          plan: plugins.DryRunPlan | None) -> None:
    """Upper bounds per iteration and for the run (sequential probing usually stops earlier)."""
    b, g, t, d = cfg.boundary, cfg.generation, cfg.training, cfg.data
    iters = cfg.iterations
    if plan is not None:  # the plugin knows its split sizes
        n_train = plan.train_prompts
        n_probe = b.probe_prompts if plan.probe_prompts is None else plan.probe_prompts
        n_eval = d.eval_prompts if plan.eval_prompts is None else plan.eval_prompts
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
    mode = d.iteration_prompts or (plan.iteration_prompts if plan is not None else "disjoint")
    if mode == "disjoint" and n_train is not None:
        n_train //= iters
        c.line(f"data: iteration_prompts=disjoint: each iteration trains on its own {approx}{_fmt(n_train)} prompts")
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
    race_gen = 0
    if races(cfg.schedule.kind, cfg.schedule.rule):
        from stagealign.race import race_prompts

        n_race = race_prompts(n_train, cfg.schedule.race_share)
        race_gen = n_race * g.n + 2 * probe_gen
        race_steps = math.ceil(n_race * t.epochs / (t.batch_size * t.gradient_accumulation_steps))
        c.line(f"cost: race (auto's rule), per iteration: 2 copies x {_fmt(race_steps)} "
               f"optimizer steps ({approx}{_fmt(n_race)} prompts each), up to {_fmt(race_gen)} generations "
               f"({_fmt(n_race)} x {g.n} candidates + 2 copies x {_fmt(probe_gen)} head to head; the head to head "
               f"stops at significance or when the race's extra cost reaches schedule.race_budget = "
               f"{cfg.schedule.race_budget:.0%} of the iteration's training); the winner copy's training is kept")
    total = iters * (probe_gen + race_gen) + on_steps * on_gen + (iters + 1) * n_eval * cfg.eval.samples
    c.line(f"cost: whole run, at most {approx}{_fmt(total)} policy generations ({iters} x {_fmt(probe_gen)} probe "
           + (f"+ {iters} x {_fmt(race_gen)} race " if race_gen else "")
           + f"+ {on_steps} on-policy iteration(s) x {_fmt(on_gen)} + {iters + 1} x {_fmt(n_eval * cfg.eval.samples)} "
           f"eval), each up to {g.max_new_tokens} new tokens")


def _pairwise(cfg: RunConfig) -> bool:
    """A pairwise-only judge costs n(n-1)/2 comparisons per prompt where a scalar one scores n."""
    from stagealign.judges import registry

    return registry.kind(cfg.judge.kind).pairwise_only


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

"""The one judge registry: every judge kind, its options and its config keys, known in one place.

A kind is one `JudgeKind` record. The core's kinds are below; plugins add theirs through
`Plugin.judges` (the synthetic world registers its judges that way), so the config check, the
dry run, the providers and `build_judge` all read the same records and cannot drift apart (they
once did: the dry run priced a pairwise-only judge as a scalar one).

Built-in kinds (heavy imports happen only when a kind is built or its options are checked):

* ``reward_model``: `RewardModelJudge(path_or_name, **options)`; ``path`` is an alias of ``path_or_name``
* ``pairrm``:       `PairRMJudge(path="llm-blender/PairRM-hf", **options)`
* ``openai``:       `OpenAIJudge(model, base_url=..., api_key_env=..., **options)`
* ``callable``:     `CallableJudge(load_callable(path), name=..., temperature=...)`, where
  ``path`` is ``"package.module:function"`` and ``function(prompts, answers) -> scores``
* ``pairwise_callable``: `PairwiseCallableJudge(load_callable(path), name=...)`, where
  ``function(prompts, a, b) -> P(a > b)``

A spec is ``{"kind": ..., **options}``; ``build_judge(spec, context={"world": world})`` hands a
kind the provider objects it declares in `JudgeKind.context` as keyword arguments, never as
options a user could set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stagealign import plugins
from stagealign.judges.base import CallableJudge, Judge, PairwiseCallableJudge, load_callable

Text = Literal["any", "real", "testbed"]
#: Which providers' text each scope can judge: a run's provider -> the scopes that fit it.
SCOPES: dict[str, tuple[str, ...]] = {"testbed": ("any", "testbed"), "real": ("any", "real")}


@dataclass(frozen=True)
class JudgeKind:
    """Everything the core knows about one judge kind.

    - ``build``: ``(**options, **context) -> Judge``, or ``"module:attr"`` so that heavy modules
      (torch) load only when the kind is used.
    - ``options``: the callable whose signature the options must fit (default: ``build``), so a
      dry run checks options without building anything.
    - ``pairwise_only``: the built judge only compares (the dry run counts comparisons, not scores).
    - ``text``: whose text the kind can judge: ``"real"`` model text, the synthetic world's
      (``"testbed"``), or ``"any"``.
    - ``path_key``: the option that `judge.path` of a run config fills (None: the kind takes none);
      ``aliases`` rename option keys to the builder's parameters (``path`` -> ``path_or_name``).
    - ``batch_size`` / ``temperature``: the kind takes `judge.batch_size` / `judge.temperature`.
    - ``context``: builder arguments the provider supplies (e.g. ``world``), never user options.
    - ``about``: what the dry run says the kind judges by when it has no model path.
    """

    name: str
    build: Callable[..., Judge] | str
    pairwise_only: bool
    text: Text = "any"
    options: Callable[..., Any] | str | None = None
    path_key: str | None = "path"
    aliases: Mapping[str, str] = field(default_factory=dict)
    batch_size: bool = False
    temperature: bool = False
    context: tuple[str, ...] = ()
    about: str = ""

    @property
    def path_param(self) -> str | None:
        """The builder parameter that `judge.path` ends up in."""
        return self.aliases.get(self.path_key, self.path_key) if self.path_key else None


def _callable_judge(path: str, name: str | None = None, temperature: float = 1.0) -> CallableJudge:
    """The ``callable`` kind: a user's ``module:function`` scorer, resolved when the judge is built."""
    return CallableJudge(load_callable(path), name=name, temperature=temperature)


def _pairwise_callable_judge(path: str, name: str | None = None) -> PairwiseCallableJudge:
    """The ``pairwise_callable`` kind: a user's ``module:function`` giving P(a > b) for (prompts, a, b)."""
    return PairwiseCallableJudge(load_callable(path), name=name)


_BUILTIN = (
    JudgeKind("reward_model", "stagealign.judges.reward_model:RewardModelJudge", pairwise_only=False, text="real",
              aliases={"path": "path_or_name"}, batch_size=True, temperature=True),
    JudgeKind("pairrm", "stagealign.judges.pairrm:PairRMJudge", pairwise_only=True, text="real", batch_size=True),
    JudgeKind("openai", "stagealign.judges.llm_api:OpenAIJudge", pairwise_only=True, text="real", path_key="model"),
    JudgeKind("callable", _callable_judge, pairwise_only=False, temperature=True),
    JudgeKind("pairwise_callable", _pairwise_callable_judge, pairwise_only=True),
)


def kinds() -> dict[str, JudgeKind]:
    """Every judge kind: the built-in ones and those of the installed plugins."""
    out = {k.name: k for k in _BUILTIN}
    for name, k in plugins.judge_kinds().items():
        if name in out:
            raise ValueError(f"plugin judge kind {name!r} clashes with the built-in kinds {sorted(out)}")
        if not isinstance(k, JudgeKind) or k.name != name:
            raise ValueError(f"plugin judge kind {name!r} must be a JudgeKind named {name!r}")
        out[name] = k
    return out


def kind(name: str) -> JudgeKind:
    """The record of kind `name`; ValueError listing the known kinds otherwise."""
    known = kinds()
    if name not in known:
        raise ValueError(f"unknown judge kind {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def fitting(provider: str) -> list[str]:
    """Kinds that can judge the text of `provider` (``"testbed"`` or ``"real"``), for messages."""
    return sorted(n for n, k in kinds().items() if k.text in SCOPES[provider])


def spec_from_config(judge_cfg: Any) -> dict:
    """`build_judge` spec of a run config's `judge` section: `judge.options` plus the config's keys.

    `judge.path` fills the kind's `path_key` (a model path, openai's `model`, a callable's
    `module:function`); `judge.batch_size` and `judge.temperature` (the Bradley-Terry temperature)
    go only to the kinds that take them.
    """
    k = kind(judge_cfg.kind)
    spec: dict = {"kind": k.name, **judge_cfg.options}
    if judge_cfg.path and k.path_key:
        spec[k.path_key] = judge_cfg.path
    if k.batch_size:
        spec.setdefault("batch_size", judge_cfg.batch_size)
    if k.temperature:
        spec.setdefault("temperature", judge_cfg.temperature)
    return spec


def _resolve(target: Callable | str) -> Callable:
    return load_callable(target) if isinstance(target, str) else target


def target(k: JudgeKind) -> Callable:
    """The callable whose signature `k`'s options must fit (imports it when named by a string)."""
    return _resolve(k.options or k.build)


def _split(spec: Mapping[str, Any]) -> tuple[JudgeKind, dict]:
    """(kind, options with aliases resolved) of a spec; ValueError on a malformed spec."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"judge spec must be a mapping with a 'kind', got {type(spec).__name__}")
    options = dict(spec)
    name = options.pop("kind", None)
    if name is None:
        raise ValueError(f"judge spec has no 'kind'; known kinds: {', '.join(sorted(kinds()))}")
    k = kind(name)
    for key, param in k.aliases.items():
        if key in options:
            if param in options:
                raise ValueError(f"the {k.name} judge takes {key!r} or {param!r}, not both")
            options[param] = options.pop(key)
    return k, options


def options_with_defaults(spec: Mapping[str, Any]) -> dict:
    """The spec's options as its kind's builder gets them (aliases resolved), with the builder's
    defaults filled in for those not given: what a dry run reports (e.g. PairRM's default model)."""
    k, given = _split(spec)
    try:
        params = inspect.signature(target(k)).parameters.values()
    except (TypeError, ValueError):
        return given
    return {**{p.name: p.default for p in params if p.default is not p.empty}, **given}


def _name(fn: Callable) -> str:
    """The judge class a target stands for: a class's name, or a builder's return annotation."""
    if isinstance(fn, type):
        return fn.__name__
    returns = inspect.signature(fn).return_annotation
    if returns is inspect.Signature.empty:
        return fn.__name__
    return returns.strip("'\"") if isinstance(returns, str) else getattr(returns, "__name__", fn.__name__)


def label(k: JudgeKind) -> str:
    """The judge class that kind `k` builds (e.g. ``PairRMJudge``), to name it in messages."""
    return _name(target(k))


def check_options(spec: Mapping[str, Any]) -> str | None:
    """Why the spec's options do not fit its kind (unknown or missing), or None when they do.

    Checked against the signature of the kind's `options` target, without building the judge;
    the kind's context arguments (supplied by the provider) are neither options nor missing.
    """
    try:
        k, given = _split(spec)
    except ValueError as exc:
        return str(exc)
    fn = target(k)
    try:
        params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", *k.context)]
    except (TypeError, ValueError):  # builtins / C callables: let the call itself complain
        return None
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = sorted(set(given) - set(named))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params):
        return (f"judge.options {unknown}: not accepted by the {k.name} judge ({_name(fn)}); "
                f"accepted: {named or 'none'}")
    missing = [p.name for p in params if p.name in named and p.default is p.empty and p.name not in given]
    if missing:
        where = "judge.path" if missing[0] == k.path_param else f"judge.options.{missing[0]}"
        return f"the {k.name} judge needs {where} (its {missing[0]!r})"
    return None


def build_judge(spec: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> Judge:
    """Judge from ``{"kind": ..., **options}``; ValueError on an unknown kind or unfit options.

    `context` holds the provider's objects (e.g. ``{"world": world}``); a kind gets those it
    declares in `JudgeKind.context` as keyword arguments.
    """
    problem = check_options(spec)
    if problem:
        raise ValueError(problem)
    k, given = _split(spec)
    context = dict(context or {})
    missing = [c for c in k.context if c not in context]
    if missing:
        raise ValueError(f"the {k.name} judge needs {missing} from its provider, which gave {sorted(context)}")
    judge = _resolve(k.build)(**given, **{c: context[c] for c in k.context})
    if not isinstance(judge, Judge):
        raise ValueError(f"judge kind {k.name!r} built a {type(judge).__name__}, not a Judge")
    return judge

"""Build a judge from a config dict: ``build_judge({"kind": "reward_model", "path": ..., ...})``.

Built-in kinds (heavy imports happen only when a kind is built):

* ``reward_model``: `RewardModelJudge(path, **kwargs)`  (``path`` or ``path_or_name``)
* ``pairrm``:       `PairRMJudge(path="llm-blender/PairRM-hf", **kwargs)`
* ``openai``:       `OpenAIJudge(model, base_url=..., api_key_env=..., **kwargs)`
* ``callable``:     `CallableJudge(load_callable(path), name=..., temperature=...)`, where
  ``path`` is ``"package.module:function"`` and ``function(prompts, answers) -> scores``

More kinds come in through ``extra={"kind": builder}``, ``builder(**kwargs) -> Judge``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from stagealign.judges.base import CallableJudge, Judge, load_callable

JudgeBuilder = Callable[..., Judge]


def _check_kwargs(kind: str, target: Callable, kwargs: Mapping[str, Any]) -> None:
    """ValueError naming the accepted arguments when `kwargs` do not fit `target`'s signature."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins / C callables: let the call itself complain
        return
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
        raise ValueError(f"judge kind {kind!r}: {exc}; accepted arguments: {params}") from None


def _reward_model(**kwargs: Any) -> Judge:
    from stagealign.judges.reward_model import RewardModelJudge

    if "path" in kwargs:
        if "path_or_name" in kwargs:
            raise ValueError("judge kind 'reward_model': give 'path' or 'path_or_name', not both")
        kwargs["path_or_name"] = kwargs.pop("path")
    if "path_or_name" not in kwargs:
        raise ValueError("judge kind 'reward_model' needs 'path' (a local directory or hub id)")
    _check_kwargs("reward_model", RewardModelJudge, kwargs)
    return RewardModelJudge(**kwargs)


def _pairrm(**kwargs: Any) -> Judge:
    from stagealign.judges.pairrm import PairRMJudge

    _check_kwargs("pairrm", PairRMJudge, kwargs)
    return PairRMJudge(**kwargs)


def _openai(**kwargs: Any) -> Judge:
    from stagealign.judges.llm_api import OpenAIJudge

    _check_kwargs("openai", OpenAIJudge, kwargs)
    return OpenAIJudge(**kwargs)


def _callable(**kwargs: Any) -> Judge:
    def spec(path: str, name: str | None = None, temperature: float = 1.0) -> None: ...

    _check_kwargs("callable", spec, kwargs)
    return CallableJudge(load_callable(kwargs["path"]), name=kwargs.get("name"),
                         temperature=kwargs.get("temperature", 1.0))


_BUILTIN: dict[str, JudgeBuilder] = {
    "reward_model": _reward_model,
    "pairrm": _pairrm,
    "openai": _openai,
    "callable": _callable,
}

# ----------------------------------------------------------------------------------------------
# EXTENSION POINT: the synthetic world's judges ("ground_truth", "noisy", ...) are not built in;
# the testbed registers them by passing `extra={"ground_truth": builder, "noisy": builder}` to
# `build_judge` (each builder takes the spec's keyword arguments and returns a `Judge`).
# ----------------------------------------------------------------------------------------------


def known_kinds(extra: Mapping[str, JudgeBuilder] | None = None) -> list[str]:
    return sorted(set(_BUILTIN) | set(extra or {}))


def build_judge(spec: Mapping[str, Any], extra: Mapping[str, JudgeBuilder] | None = None) -> Judge:
    """Judge from ``{"kind": ..., **kwargs}``; unknown kinds raise ValueError listing the known ones."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"judge spec must be a mapping with a 'kind', got {type(spec).__name__}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_BUILTIN))
    if clash:
        raise ValueError(f"extra judge kinds {clash} clash with built-in kinds {sorted(_BUILTIN)}")
    kwargs = dict(spec)
    kind = kwargs.pop("kind", None)
    if kind is None:
        raise ValueError(f"judge spec has no 'kind'; known kinds: {known_kinds(extra)}")
    builders = {**_BUILTIN, **extra}
    if kind not in builders:
        raise ValueError(f"unknown judge kind {kind!r}; known kinds: {known_kinds(extra)}")
    builder = builders[kind]
    if kind in extra:
        _check_kwargs(kind, builder, kwargs)
    judge = builder(**kwargs)
    if not isinstance(judge, Judge):
        raise ValueError(f"judge kind {kind!r} built a {type(judge).__name__}, not a Judge")
    return judge

"""The extension point: optional parts plug into the core without the core importing them.

A plugin is one `Plugin` value that names what it adds: config sections (validated inside the run
config like every other section, so typos get the same one-line errors), the provider that builds
a run's ingredients, the judge kinds it brings, and the lines `--dry-run` prints for it. Plugins
are found through the ``stagealign.plugins`` entry-point group (see pyproject.toml); the built-in
synthetic world is one (`stagealign.testbed.plugin:PLUGIN`). So the import graph of the core never
reaches the testbed, and another world, or an in-house data provider, plugs in the same way.

This module knows no plugin by name and imports nothing of the core, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "stagealign.plugins"


@dataclass(frozen=True)
class DryRunPlan:
    """What a provider plugin tells `--dry-run` about a config before anything is built."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    train_prompts: int | None = None
    probe_prompts: int | None = None
    eval_prompts: int | None = None
    answers_per_prompt: int | None = None  # static pool answers per prompt
    iteration_prompts: str = "disjoint"  # the provider's default for data.iteration_prompts


@dataclass(frozen=True)
class Plugin:
    """What one plugin adds to the core. Every field is optional but the name.

    - ``sections``: config sections by top-level key (pydantic models with defaults).
    - ``provider``: the name a run config selects it by (`policy.<provider>`), and ``build``,
      ``(cfg, log) -> providers.Provider``.
    - ``judges``: judge kinds by name, each a `judges.registry.JudgeKind`.
    - ``dry_run``: ``cfg -> DryRunPlan`` for configs this plugin provides.
    - ``show``: ``cfg -> str``, a description for `stagealign world show`.
    - ``decompose``: ``(cfg, pairs) -> dict``, mean statistics of a run's answers in the plugin's
      own terms (the testbed: knowledge-token rate, utility per word, length, repeats, the parts of
      its reward), from ``pairs`` of (prompt id, answer) as the run's artifacts hold them
      (``eval_answers.jsonl``): ``{name: number or None}``, in display order. The core shows them
      by name without knowing any (`stagealign world show --checkpoint`, the grid's diagnostics).
    - ``decompose_columns``: the few of those names a compact table shows (default: all).
    """

    name: str
    sections: Mapping[str, type] = field(default_factory=dict)
    provider: str | None = None
    build: Callable[..., Any] | None = None
    judges: Mapping[str, Any] = field(default_factory=dict)
    dry_run: Callable[[Any], DryRunPlan] | None = None
    show: Callable[[Any], str] | None = None
    decompose: Callable[[Any, Any], dict[str, Any]] | None = None
    decompose_columns: tuple[str, ...] = ()


class PluginError(RuntimeError):
    """A plugin cannot be loaded or clashes with another one."""


@lru_cache(maxsize=1)
def plugins() -> tuple[Plugin, ...]:
    """Every installed plugin, in entry-point name order (loaded once per process)."""
    found = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise PluginError(f"stagealign plugin {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
        if not isinstance(plugin, Plugin):
            raise PluginError(f"stagealign plugin {ep.name!r} ({ep.value}) is a {type(plugin).__name__}, "
                              "not a stagealign.plugins.Plugin")
        found.append(plugin)
    _check_clashes(found)
    return tuple(found)


def _check_clashes(found: list[Plugin]) -> None:
    for what in ("sections", "judges"):
        seen: dict[str, str] = {}
        for p in found:
            for key in getattr(p, what):
                if key in seen:
                    raise PluginError(f"plugins {seen[key]!r} and {p.name!r} both define {what[:-1]} {key!r}")
                seen[key] = p.name


def config_sections() -> dict[str, type]:
    return {key: model for p in plugins() for key, model in p.sections.items()}


def judge_kinds() -> dict[str, Any]:
    return {key: kind for p in plugins() for key, kind in p.judges.items()}


def provider(name: str) -> Plugin:
    """The plugin that provides runs selected by `policy.<name>`."""
    for p in plugins():
        if p.provider == name:
            return p
    raise PluginError(f"no installed stagealign plugin provides {name!r} runs "
                      "(is the package installed, e.g. `pip install -e .`?)")


def of_run(cfg: Any) -> Plugin | None:
    """The plugin providing a run config's runs: the one whose `policy.<provider>` is set; None for
    runs no plugin provides (a Hugging Face model, `policy.model`)."""
    for p in plugins():
        if p.provider is not None and getattr(cfg.policy, p.provider, None) is not None:
            return p
    return None

"""The synthetic world's plug: its `world` config section, provider, judges, dry-run lines, `world
show` text and the decomposition of a checkpoint's answers (`summary.answer_stats`).

Registered in pyproject.toml under the ``stagealign.plugins`` entry points; the core finds it
there and never imports the testbed itself (see `stagealign.plugins`). Heavy parts (torch, the
SFT of initial policies) load only when a run actually uses the world.
"""

from __future__ import annotations

from stagealign.judges.registry import JudgeKind
from stagealign.plugins import Plugin
from stagealign.testbed.judges import GroundTruthJudge, NoisyJudge
from stagealign.testbed.summary import COLUMNS
from stagealign.testbed.world import WorldConfig

#: The world's judges: both read the world's hidden reward, which the provider passes as `world`.
JUDGES = (
    JudgeKind("ground_truth", GroundTruthJudge, pairwise_only=False, text="testbed", path_key=None,
              context=("world",), about="the synthetic world's preference"),
    JudgeKind("noisy", NoisyJudge, pairwise_only=True, text="testbed", path_key=None,
              context=("world",), about="the synthetic world's preference"),
)


def _build(cfg, log):
    from stagealign.testbed.provider import build

    return build(cfg, log)


def _dry_run(cfg):
    from stagealign.testbed.provider import dry_run

    return dry_run(cfg)


def _show(cfg) -> str:
    from stagealign.testbed.summary import describe

    return describe(cfg.world)


def _decompose(cfg, pairs) -> dict:
    from stagealign.testbed.summary import answer_stats_by_id
    from stagealign.testbed.world import World

    return answer_stats_by_id(World(cfg.world), pairs)


PLUGIN = Plugin(name="testbed", sections={"world": WorldConfig}, provider="testbed", build=_build,
                judges={k.name: k for k in JUDGES}, dry_run=_dry_run, show=_show, decompose=_decompose,
                decompose_columns=COLUMNS)

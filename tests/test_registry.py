"""The one judge registry: config, dry run and providers read the same record of every kind."""

from __future__ import annotations

import pytest

from stagealign.config import ConfigError, load_config
from stagealign.dryrun import validate
from stagealign.judges import registry

KINDS = sorted(registry.kinds())
MODEL_KINDS = {"reward_model", "pairrm", "openai"}  # need a model download or an endpoint to build
HF = ["policy.model=org/m", "data.pool=org/d"]


def _cost_line(lines: list[str], start: str) -> str:
    return next(line for line in lines if line.startswith(start))


def test_dry_run_counts_comparisons_for_the_pairwise_only_noisy_judge():
    """`NoisyJudge` only compares: a prompt's n answers cost n(n-1)/2 comparisons, not n scores."""
    cfg = load_config(None, ["world.scale=small", "judge.kind=noisy", "generation.n=4", "data.train_prompts=10"])
    lines = validate(cfg, cuda=False)
    on = _cost_line(lines, "cost: on-policy build")
    assert on.endswith("60 judge comparisons"), on  # 10 prompts x 4*3/2
    static = _cost_line(lines, "cost: static build")
    assert "60 judge comparisons (4 pool answers per prompt)" in static, static
    scalar = validate(load_config(None, ["world.scale=small", "generation.n=4", "data.train_prompts=10"]), cuda=False)
    assert _cost_line(scalar, "cost: on-policy build").endswith("40 judge scores")


def _build_args(name: str) -> tuple[dict, dict]:
    """(spec, context) to build kind `name` without a download: the testbed's kinds get a world."""
    from stagealign.testbed.world import World, WorldConfig

    spec = {"kind": name}
    if registry.kind(name).path_param == "path" and registry.check_options(spec):
        spec["path"] = "builtins:len"  # the callable kind: any importable function
    return spec, {"world": World(WorldConfig(scale="small"))}


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_says_whether_its_judge_is_pairwise_only(name):
    kind = registry.kind(name)
    if name in MODEL_KINDS:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
        assert registry.target(kind).pairwise_only is kind.pairwise_only
        return
    judge = registry.build_judge(*_build_args(name))
    assert judge.pairwise_only is kind.pairwise_only


def test_the_testbed_kinds_come_from_its_plugin():
    from stagealign import plugins

    testbed = plugins.provider("testbed").judges
    assert {"ground_truth", "noisy"} <= set(testbed)
    assert all(registry.kind(name) is kind and kind.text == "testbed" for name, kind in testbed.items())


def test_unknown_kind_in_a_config_is_one_line_naming_the_known_kinds():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["judge.kind=magic"])
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and "judge.kind: unknown judge kind 'magic'; known: " in lines[0]
    assert all(name in lines[0] for name in KINDS)


@pytest.mark.parametrize("name", KINDS)
def test_option_checks_reject_an_unknown_option_for_every_kind(name):
    problem = registry.check_options({"kind": name, "bogus_option": 1})
    assert problem and "bogus_option" in problem and f"the {name} judge" in problem
    with pytest.raises(ValueError, match="bogus_option"):
        registry.build_judge({"kind": name, "bogus_option": 1}, context={"world": None})


@pytest.mark.parametrize("overrides, text", [
    (["judge.kind=pairrm"], "the synthetic world's text can only be judged by"),
    ([*HF, "judge.kind=noisy"], "a real model's text can only be judged by"),
    ([*HF, "judge.kind=ground_truth"], "a real model's text can only be judged by"),
])
def test_a_judge_must_read_the_providers_text(overrides, text):
    with pytest.raises(ConfigError, match=text):
        load_config(None, overrides)


def test_the_provider_context_is_not_a_user_option():
    """The world reaches the testbed's judges from their provider, never from `judge.options`."""
    assert "not accepted" in registry.check_options({"kind": "noisy", "world": 1, "seed": 2})
    spec, context = _build_args("noisy")
    assert registry.build_judge({**spec, "seed": 2.0}, context).seed == 2
    with pytest.raises(ValueError, match="needs \\['world'\\] from its provider"):
        registry.build_judge(spec)


def test_spec_from_config_maps_the_config_keys():
    def spec(*overrides):
        return registry.spec_from_config(load_config(None, [*HF, *overrides]).judge)

    assert spec("judge.kind=openai", "judge.path=gpt-4o-mini", "judge.options.api_key_env=MY_KEY") == {
        "kind": "openai", "model": "gpt-4o-mini", "api_key_env": "MY_KEY"}
    assert spec("judge.kind=reward_model", "judge.path=org/rm", "judge.temperature=0.5", "judge.batch_size=4") == {
        "kind": "reward_model", "path": "org/rm", "batch_size": 4, "temperature": 0.5}
    assert spec("judge.kind=pairrm") == {"kind": "pairrm", "batch_size": 32}
    assert spec("judge.kind=callable", "judge.path=m:f") == {"kind": "callable", "path": "m:f", "temperature": 1.0}
    testbed = registry.spec_from_config(load_config(None, ["judge.kind=noisy", "judge.options.seed=3"]).judge)
    assert testbed == {"kind": "noisy", "seed": 3}


def test_option_checks_name_what_is_missing():
    assert "needs judge.path" in registry.check_options({"kind": "reward_model"})
    assert "needs judge.path" in registry.check_options({"kind": "openai"})
    assert registry.check_options({"kind": "pairrm"}) is None  # PairRM has a default model
    assert registry.options_with_defaults({"kind": "pairrm"})["path"] == "llm-blender/PairRM-hf"

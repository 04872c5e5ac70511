"""The boundary score on real tiny policies: direction, sequential early stop, cost, CLI."""

import json

import numpy as np
import pytest

from conftest import cli, tiny_config
from stagealign.boundary import measure, votes_for, votes_for_many
from stagealign.judges import CallableJudge
from stagealign.policy import load_policy
from stagealign.providers import build_provider


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("b") / "r", "policy.testbed=weak", "boundary.probe_prompts=64")
    prov = build_provider(cfg, log=lambda m: None)
    return cfg, prov, load_policy(prov.initial_policy)


def test_votes_count_ties_as_half():
    j = CallableJudge(lambda p, a: [float(len(x)) for x in a], temperature=1e-6)
    v = votes_for(j, "x", ["aa", "b"], ["a", "bb"], hard=True)
    assert v.tolist() == [1.0, 0.5, 0.5, 0.0]


@pytest.mark.parametrize("hard", [False, True])
def test_votes_of_many_prompts_judged_together_are_the_same_votes(hard):
    j = CallableJudge(lambda p, a: [len(x) + len(q) for q, x in zip(p, a)])
    prompts = ["x", "yy", "zzz"]
    on = [["aa", "b"], ["c"], ["dddd", "e", "ff"]]
    off = [["a", "bb"], ["cc", "c", "ccc"], ["d"]]
    many = votes_for_many(j, prompts, on, off, hard, chunk=4)
    assert len(many) == 3
    for got, p, o, s in zip(many, prompts, on, off):
        np.testing.assert_array_equal(got, votes_for(j, p, o, s, hard))


def test_weak_policy_is_in_injection_stage(setup):
    cfg, prov, policy = setup
    res = measure(policy, prov.probe, prov.pool, prov.judge, cfg.boundary, cfg.generation, seed=0,
                  train_prompts=len(prov.train))
    assert res.bs < 0.5 and res.hi < 0.5 and res.decision == "injection"
    assert res.comparisons == res.prompts * cfg.boundary.samples * 4  # M x K per probe prompt
    assert 0 < res.cost_vs_epoch < 1


def test_sequential_stops_early_and_agrees_with_fixed_probe(setup):
    cfg, prov, policy = setup
    seq = measure(policy, prov.probe, prov.pool, prov.judge, cfg.boundary, cfg.generation, seed=0)
    fixed_cfg = cfg.boundary.model_copy(update={"sequential": False})
    fixed = measure(policy, prov.probe, prov.pool, prov.judge, fixed_cfg, cfg.generation, seed=0)
    assert fixed.prompts == 64 and seq.prompts < fixed.prompts
    assert seq.comparisons < fixed.comparisons and seq.decision == fixed.decision


def test_sequential_runs_to_the_cap_when_the_policy_sits_on_the_boundary(setup):
    """A judge that calls every comparison a coin flip keeps BS at 0.5: no early stop."""
    cfg, prov, policy = setup
    coin = CallableJudge(lambda p, a: [0.0] * len(a))
    res = measure(policy, prov.probe, prov.pool, coin, cfg.boundary, cfg.generation, seed=0)
    assert res.bs == pytest.approx(0.5) and res.decision == "uncertain" and res.prompts == 64


def test_hard_votes(setup):
    cfg, prov, policy = setup
    hard = cfg.boundary.model_copy(update={"votes": "hard", "sequential": False})
    res = measure(policy, prov.probe, prov.pool, prov.judge, hard, cfg.generation, seed=0)
    assert set(np.unique(np.round(np.array(res.per_prompt) * 2 * 4 * 2))) <= set(range(0, 17))


def test_measure_cli_json(tmp_path):
    from conftest import tiny_world_overrides

    cfg = tmp_path / "c.yaml"
    cfg.write_text("policy:\n  testbed: strong\n")
    r = cli("measure", str(cfg), *tiny_world_overrides(), "boundary.probe_prompts=32", "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    d = json.loads(r.stdout)
    assert {"bs", "lo", "hi", "decision", "generations", "judge_calls", "seconds", "cost_vs_epoch"} <= set(d)

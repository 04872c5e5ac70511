"""Race-and-keep (`stagealign.race`) on real tiny policies: it finds the copy trained on the better
pairs, and two copies trained alike tie exactly (common random numbers)."""

import pytest

from conftest import tiny_config
from stagealign.data.pairs import make_pairs, score_sets
from stagealign.data.schema import CandidateSet
from stagealign.policy import load_policy
from stagealign.providers import build_provider
from stagealign.race import race
from stagealign.rundir import RunDir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("race") / "r", "policy.testbed=weak", "boundary.probe_prompts=64",
                      "training.learning_rate=0.005", "training.epochs=2")
    prov = build_provider(cfg, log=lambda m: None)
    sets = [CandidateSet.from_row(prov.pool[q.id].to_row()) for q in prov.train if q.id in prov.pool][:96]
    score_sets(sets, prov.judge)
    good = [p.to_row() for p in make_pairs(sets)[0]]
    bad = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in good]  # the judge's order, reversed
    return cfg, prov, good, bad


def _race(cfg, prov, rows, work):
    return race(lambda: load_policy(prov.initial_policy), rows, prov.probe, prov.judge, cfg.training, cfg.boundary,
                cfg.generation, seed=3, work_dir=work)


def test_race_keeps_the_source_whose_pairs_are_better(setup, tmp_path):
    cfg, prov, good, bad = setup
    res = _race(cfg, prov, {"onpolicy": good, "static": bad}, tmp_path)
    assert res.winner == "onpolicy" and res.decision == "fine-tuning"
    assert res.win_rate > 0.5 and res.significant and res.lo > 0.5
    # and the other way round: the decision follows the pairs, not the source's name
    res = _race(cfg, prov, {"onpolicy": bad, "static": good}, tmp_path / "swap")
    assert res.winner == "static" and res.decision == "injection" and res.hi < 0.5
    assert res.pairs == {"static": len(good), "onpolicy": len(bad)}
    assert res.train_token_passes > 0 and res.gen_token_passes > 0 and res.seconds > 0


def test_copies_trained_alike_tie_exactly_and_run_to_the_cap(setup, tmp_path):
    cfg, prov, good, _ = setup
    res = _race(cfg, prov, {"onpolicy": good, "static": good}, tmp_path)
    # same pairs, same training seed, same sampling seeds: identical answers, every vote 1/2
    assert res.win_rate == pytest.approx(0.5) and not res.significant
    assert res.prompts == min(cfg.boundary.probe_prompts, len(prov.probe))
    assert "not significant" in res.evidence
    assert res.lo == pytest.approx(0.5) and res.hi == pytest.approx(0.5)  # no vote differs from 1/2


def test_race_without_pairs_for_a_source_is_uncertain_and_says_what_to_change(setup, tmp_path):
    cfg, prov, good, _ = setup
    res = _race(cfg, prov, {"onpolicy": good, "static": []}, tmp_path)
    assert res.decision == "uncertain" and res.winner is None and "race_share" in res.evidence
    assert res.pairs == {"static": 0, "onpolicy": len(good)} and not list(tmp_path.iterdir())  # nothing trained


def test_a_run_with_rule_race_records_the_race_and_follows_its_winner(tmp_path):
    from stagealign.pipeline import Run

    cfg = tiny_config(tmp_path / "run", "policy.testbed=weak", "iterations=1", "schedule.rule=race",
                      "schedule.race_share=0.25")
    summary = Run(cfg).execute()
    dec = RunDir(cfg.run_dir).read_stage(1, "decide")
    raced = dec["race"]
    assert raced["pairs"]["static"] > 0 and raced["pairs"]["onpolicy"] > 0
    assert dec["source"] == raced["winner"] and dec["reason"].startswith("auto (race)")
    assert summary["rule"] == "race" and raced["seconds"] > 0

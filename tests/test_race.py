"""Race-and-keep (`stagealign.race`) on real tiny policies: it finds the copy trained on the better
pairs and keeps it, two copies trained alike tie exactly (common random numbers), its budget stops
the head to head, and a run continues from the kept copy, also after a crash."""

import pytest

from conftest import tiny_config
from stagealign.data.pairs import make_pairs, score_sets
from stagealign.data.schema import CandidateSet
from stagealign.policy import load_policy
from stagealign.providers import build_provider
from stagealign.race import SOURCES, race
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


def _race(cfg, prov, rows, work, **kw):
    return race(lambda: load_policy(prov.initial_policy), rows, prov.probe, prov.judge, cfg.training, cfg.boundary,
                cfg.generation, seed=3, work_dir=work, **kw)


def test_race_keeps_the_source_whose_pairs_are_better(setup, tmp_path):
    cfg, prov, good, bad = setup
    loaded, kept = [], []

    def load():
        loaded.append(load_policy(prov.initial_policy))
        return loaded[-1]

    res = race(load, {"onpolicy": good, "static": bad}, prov.probe, prov.judge, cfg.training, cfg.boundary,
               cfg.generation, seed=3, work_dir=tmp_path / "keep", keep=kept.append)
    assert res.winner == "onpolicy" and res.decision == "fine-tuning"
    assert res.win_rate > 0.5 and res.significant and res.lo > 0.5 and res.stopped == "significant"
    # the copy handed on is the winner's (copies are trained in SOURCES order), not a fresh one
    assert res.kept and len(kept) == 1 and kept[0] is loaded[SOURCES.index("onpolicy")]
    # its training is kept, so the cost is the loser's training and the head to head only
    assert res.extra_token_passes == res.train_token_passes["static"] + res.h2h_token_passes > 0
    # and the other way round: the decision follows the pairs, not the source's name
    res = _race(cfg, prov, {"onpolicy": bad, "static": good}, tmp_path / "swap")
    assert res.winner == "static" and res.decision == "injection" and res.hi < 0.5
    assert res.pairs == {"static": len(good), "onpolicy": len(bad)}
    assert min(res.train_token_passes.values()) > 0 and res.h2h_token_passes > 0 and res.seconds > 0


def test_copies_trained_alike_tie_exactly_and_run_to_the_cap(setup, tmp_path):
    cfg, prov, good, _ = setup
    res = _race(cfg, prov, {"onpolicy": good, "static": good}, tmp_path)
    # same pairs, same training seed, same sampling seeds: identical answers, every vote 1/2
    assert res.win_rate == pytest.approx(0.5) and not res.significant
    assert res.prompts == min(cfg.boundary.probe_prompts, len(prov.probe))
    assert "not significant" in res.evidence and res.stopped == "probe"
    assert res.lo == pytest.approx(0.5) and res.hi == pytest.approx(0.5)  # no vote differs from 1/2
    # a budget the copies' training alone exceeds: one look, then the race stops and says why
    cheap = _race(cfg, prov, {"onpolicy": good, "static": good}, tmp_path / "cheap", budget=1e-6)
    assert cheap.looks == 1 and cheap.prompts == cfg.boundary.batch_prompts and cheap.stopped == "budget"
    assert "race budget spent" in cheap.evidence and cheap.h2h_token_passes < res.h2h_token_passes


def test_race_without_pairs_for_a_source_is_uncertain_and_says_what_to_change(setup, tmp_path):
    cfg, prov, good, _ = setup
    res = _race(cfg, prov, {"onpolicy": good, "static": []}, tmp_path)
    assert res.decision == "uncertain" and res.winner is None and "race_share" in res.evidence
    assert res.pairs == {"static": 0, "onpolicy": len(good)} and not list(tmp_path.iterdir())  # nothing trained


def test_a_run_with_rule_race_continues_from_the_winner_copy_also_after_a_crash(tmp_path, monkeypatch):
    import stagealign.pipeline as pipeline

    cfg = tiny_config(tmp_path / "run", "policy.testbed=weak", "iterations=1", "schedule.rule=race",
                      "schedule.race_share=0.25")
    run_dir = RunDir(cfg.run_dir)

    def crash(*a, **kw):
        raise RuntimeError("killed while training")

    monkeypatch.setattr(pipeline, "train_preference", crash)  # the iteration's training only (race.py has its own)
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.Run(cfg).execute()
    assert run_dir.has(1, "decide") and not run_dir.has(1, "train") and run_dir.race_copy(1).is_dir()
    monkeypatch.undo()

    summary = pipeline.Run(cfg).execute()  # resumes: the race is not run again, its copy goes on training
    dec, train = run_dir.read_stage(1, "decide"), run_dir.read_stage(1, "train")
    raced = dec["race"]
    assert raced["pairs"]["static"] > 0 and raced["pairs"]["onpolicy"] > 0 and raced["kept"]
    assert dec["source"] == raced["winner"] and dec["reason"].startswith("auto (race)")
    assert summary["rule"] == "race" and raced["seconds"] > 0
    assert train["continued_race_copy"] == raced["winner"]
    # the race prompts trained the kept copy; the iteration's build leaves them out
    race_rows = list(run_dir.read_rows(1, "race_pairs.jsonl"))
    pairs = list(run_dir.read_rows(1, "pairs.jsonl"))
    assert len(race_rows) == raced["pairs"][raced["winner"]] and pairs
    assert {r["prompt_id"] for r in race_rows} <= set(raced["prompt_ids"])
    assert not {r["prompt_id"] for r in pairs} & set(raced["prompt_ids"])
    assert summary["iterations"][0]["pairs"] == len(pairs) + len(race_rows)  # what the iteration trained on
    assert not run_dir.race_copy(1).exists()  # removed once the training was recorded


def test_a_lost_race_copy_is_a_clear_error_not_a_silent_restart(tmp_path, monkeypatch):
    import shutil

    import stagealign.pipeline as pipeline

    cfg = tiny_config(tmp_path / "run", "policy.testbed=weak", "iterations=1", "schedule.rule=race",
                      "schedule.race_share=0.25")
    monkeypatch.setattr(pipeline, "train_preference", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.Run(cfg).execute()
    monkeypatch.undo()
    shutil.rmtree(RunDir(cfg.run_dir).race_copy(1))
    with pytest.raises(FileNotFoundError, match="decide.json"):
        pipeline.Run(cfg).execute()

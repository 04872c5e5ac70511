"""The sources that need no decision (`union`, `route`) end to end on a tiny real model, and the
grid's schedule entries for them and for auto's rules (cells, typos, what they may adopt)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers.generation.utils import GenerationMixin

import tiny_hf
from stagealign.config import load_config
from stagealign.grid import GridError, grid_cells, parse_grid
from stagealign.grid.reuse import plan_reuse, realised
from stagealign.pipeline import Run
from stagealign.rundir import RunDir

POOL_ENV = "STAGEALIGN_TEST_STATIC_POOL"  # the pool the judges below know the static answers of
_static: dict[str, set[str]] = {}


def _static_answers() -> set[str]:
    path = os.environ[POOL_ENV]
    if path not in _static:
        with open(path, encoding="utf-8") as fh:
            _static[path] = {a for line in fh if line.strip() for a in json.loads(line)["responses"]}
    return _static[path]


def _prefer(prompts: list[str], answers: list[str], static_first: bool) -> list[float]:
    """tiny_hf's scores (so the answers of one source still rank apart), plus 10 for the preferred source."""
    static = _static_answers()
    return [s + 10.0 * ((a in static) == static_first) for a, s in zip(answers, tiny_hf.score(prompts, answers))]


def prefer_static(prompts: list[str], answers: list[str]) -> list[float]:
    """A callable judge under which every static answer beats every other answer."""
    return _prefer(prompts, answers, True)


def prefer_onpolicy(prompts: list[str], answers: list[str]) -> list[float]:
    """A callable judge under which every answer not from the static pool beats every static one."""
    return _prefer(prompts, answers, False)


def _run(tmp_path: Path, name: str, *extra: str):
    base = tiny_hf.quick_run(tmp_path, "iterations=1", *extra)
    cfg = load_config(None, [f"run_dir={tmp_path / name}", *base])
    Run(cfg).execute()
    return RunDir(cfg.run_dir)


def _is_policy(source: str) -> bool:
    return source.startswith("policy@")


def test_union_ranks_static_and_onpolicy_candidates_together(tmp_path):
    rd = _run(tmp_path, "union", "schedule.kind=union")
    assert rd.read_stage(1, "decide")["source"] == "union"
    sets = list(rd.read_rows(1, "candidates.jsonl"))
    assert sets and {s["origin"] for s in sets} == {"union"}  # the tiny pool covers every training prompt
    pool: dict[str, list[str]] = {}  # the tiny pool repeats its prompts: their answers are merged
    for row in map(json.loads, (tmp_path / "pool.jsonl").read_text().splitlines()):
        pool.setdefault(row["prompt"], []).extend(row["responses"])
    for s in sets:  # one set per prompt: the pool's answers first, then the policy's (non-empty) samples
        n = len(pool[s["prompt"]])
        assert s["candidates"][:n] == pool[s["prompt"]] and all(x.startswith("writer-") for x in s["sources"][:n])
        assert set(s["sources"][n:]) <= {"policy@0"} and len(s["sources"]) <= n + 2
        assert len(s["scores"]) == len(s["candidates"])
    assert any("policy@0" in s["sources"] for s in sets)
    assert len({s["prompt_id"] for s in sets}) == len(sets)
    pairs = list(rd.read_rows(1, "pairs.jsonl"))
    assert pairs and {p["origin"] for p in pairs} == {"union"}
    assert any(_is_policy(p["chosen_source"]) != _is_policy(p["rejected_source"]) for p in pairs)
    assert rd.read_stage(1, "build")["by_origin"] == {"union": len(pairs)}


@pytest.mark.parametrize("judge, winner", [("prefer_static", "static"), ("prefer_onpolicy", "onpolicy")])
def test_route_follows_the_judge_prompt_by_prompt(tmp_path, monkeypatch, judge, winner):
    monkeypatch.setenv(POOL_ENV, str(tmp_path / "pool.jsonl"))  # quick_run writes the pool there
    rd = _run(tmp_path, "route", "schedule.kind=route", f"judge.path=test_sources_union_route:{judge}",
              "boundary.votes=hard")
    build = rd.read_stage(1, "build")
    sets = list(rd.read_rows(1, "candidates.jsonl"))
    assert build["routed"] == {"onpolicy": len(sets) if winner == "onpolicy" else 0,
                               "static": len(sets) if winner == "static" else 0}
    assert {s["origin"] for s in sets} == {winner}
    pairs = list(rd.read_rows(1, "pairs.jsonl"))
    assert pairs and {p["origin"] for p in pairs} == {winner}
    assert all(_is_policy(p["chosen_source"]) == (winner == "onpolicy") for p in pairs)


def test_route_counts_add_up_to_the_training_prompts(tmp_path):
    rd = _run(tmp_path, "route", "schedule.kind=route")
    routed = rd.read_stage(1, "build")["routed"]
    sets = list(rd.read_rows(1, "candidates.jsonl"))
    assert routed["onpolicy"] + routed["static"] == len(sets) == len({s["prompt_id"] for s in sets}) > 0
    origins = [s["origin"] for s in sets]
    assert (origins.count("onpolicy"), origins.count("static")) == (routed["onpolicy"], routed["static"])
    for s in sets:  # a routed set is one source's candidates only
        assert all(_is_policy(x) == (s["origin"] == "onpolicy") for x in s["sources"])


def test_a_union_run_stopped_while_sampling_keeps_its_finished_batches(tmp_path, monkeypatch):
    """Stopped after the build's second sampling batch (in process: tests/test_resume_inside_stages.py
    kills the CLI for real), the run resumes after those batches and ends with the same candidates."""
    import stagealign.pipeline as pl

    calls = []
    real_hf = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, *a, **k: (calls.append(1), real_hf(self, *a, **k))[1])
    real = pl.generate

    def stopping(*a, on_batch, **k):
        seen = []

        def save(*batch):
            on_batch(*batch)
            seen.append(1)
            if len(seen) == 2:
                raise _Stopped

        return real(*a, on_batch=save, **k)

    base = tiny_hf.quick_run(tmp_path, "generation.batch_size=8", "iterations=1", "schedule.kind=union")
    cfg = load_config(None, [f"run_dir={tmp_path / 'stopped'}", *base])
    with monkeypatch.context() as m:
        m.setattr(pl, "generate", stopping)
        with pytest.raises(_Stopped):
            Run(cfg).execute()
    rd = RunDir(cfg.run_dir)
    assert len(rd.read_partial(1, "samples")) == 16 and not rd.has(1, "build")

    calls.clear()
    Run(cfg).execute()
    resumed = len(calls)
    calls.clear()
    Run(load_config(None, [f"run_dir={tmp_path / 'fresh'}", *base])).execute()
    assert resumed == len(calls) - 2 - 1  # two sampling batches kept; iteration 0's evaluation done
    assert not rd.partial_path(1, "samples").exists()
    fresh = RunDir(tmp_path / "fresh")
    assert list(rd.read_rows(1, "candidates.jsonl")) == list(fresh.read_rows(1, "candidates.jsonl"))
    assert list(rd.read_rows(1, "pairs.jsonl")) == list(fresh.read_rows(1, "pairs.jsonl"))


class _Stopped(Exception):
    pass


# ---------------------------------------------------------------------------------------- the grid
def test_grid_schedules_name_kinds_and_rules(tmp_path):
    base = load_config(None, ["schedule.rule=bs-pool"])
    spec = parse_grid({"iterations": 1, "paths": "none", "schedules": ["bs-hard", "coverage", "union", "route", "auto"]})
    cells = grid_cells(base, spec, tmp_path)
    got = [(c.name, c.kind, c.cfg.schedule.kind, c.cfg.schedule.rule) for c in cells]
    assert got == [("bs-hard", "auto", "auto", "bs-hard"), ("coverage", "auto", "auto", "coverage"),
                   ("union", "union", "union", "bs-pool"), ("route", "route", "route", "bs-pool"),
                   ("auto", "auto", "auto", "bs-pool")]  # auto keeps the config's rule
    assert [c.dir.name for c in cells] == [c.name for c in cells]
    assert [c.to_dict(tmp_path)["rule"] for c in cells] == ["bs-hard", "coverage", None, None, "bs-pool"]
    # race reads no probe; the probe-based rules need it
    off = load_config(None, ["boundary.enabled=false"])
    assert [c.name for c in grid_cells(off, parse_grid({"paths": "none", "schedules": ["race", "union"]}), tmp_path)] \
        == ["race", "union"]
    with pytest.raises(GridError, match="schedule 'coverage' needs boundary.enabled=true"):
        grid_cells(off, parse_grid({"paths": "none", "schedules": ["coverage"]}), tmp_path)


@pytest.mark.parametrize("typo, hint", [("covrage", "did you mean 'coverage'?"), ("unoin", "did you mean 'union'?"),
                                        ("bs_hard", "did you mean 'bs-hard'?")])
def test_a_schedule_typo_names_the_entry_and_the_closest_name(typo, hint):
    with pytest.raises(GridError) as exc:
        parse_grid({"schedules": ["auto", typo]})
    assert f"grid.schedules.1: unknown schedule '{typo}'; {hint}" in str(exc.value)


def _finish(cell, source: str, measure: dict) -> None:
    """A finished one-iteration cell without training: just the records plan_reuse reads."""
    rd = cell.run
    rd.write_stage(0, "evaluate", {})
    rd.write_stage(1, "measure", measure)
    rd.write_stage(1, "decide", {"source": source, "onpolicy_share": float(source == "onpolicy"), "reason": ""})
    rd.write_stage(1, "evaluate", {})
    cell.sig = realised(cell)


@pytest.mark.parametrize("measure, hard_src, coverage_src", [
    # the soft BS says on-policy; hard votes and the coverage rule say static
    ({"bs_hard": 0.2, "bs_hard_lo": 0.1, "bs_hard_hi": 0.3, "uncovered": 0.5, "coverage_share": 0.25}, "off", "off"),
    ({"bs_hard": 0.9, "bs_hard_lo": 0.8, "bs_hard_hi": 0.95, "uncovered": 0.1, "coverage_share": 0.25}, "on", "on"),
    ({}, None, None),  # measured by a probe that recorded none of it: those cells measure themselves
])
def test_what_rule_union_and_route_cells_adopt(tmp_path, measure, hard_src, coverage_src):
    base = load_config(None, [])
    spec = parse_grid({"iterations": 1, "paths": "all", "schedules": ["bs", "bs-hard", "coverage", "race", "union",
                                                                      "route"]})
    cells = {c.name: c for c in grid_cells(base, spec, tmp_path)}
    full = {"measured": True, "bs": 0.7, "lo": 0.6, "hi": 0.8, "decision": "fine-tuning", **measure}
    for name, src in (("path-off", "static"), ("path-on", "onpolicy")):
        _finish(cells[name], src, full)
    finished = [cells["path-off"], cells["path-on"]]

    bs = plan_reuse(cells["bs"], finished)
    assert (bs.upto, bs.src.name) == (1, "path-on")  # the paper's rule: BS 0.7 -> on-policy
    for name, want in (("bs-hard", hard_src), ("coverage", coverage_src)):
        plan = plan_reuse(cells[name], finished)
        if want is None:
            assert (plan.upto, plan.measure_src) == (0, None)
        else:
            assert (plan.upto, plan.src.name, plan.sig) == (1, f"path-{want}",
                                                            [("dpo", {"off": "static", "on": "onpolicy"}[want])])
    race = plan_reuse(cells["race"], finished)  # would predict schedule.first (static) without its race
    assert (race.upto, race.sig, race.measure_src) == (0, [], None) and race.src is not None
    for name in ("union", "route"):
        plan = plan_reuse(cells[name], finished)
        assert (plan.upto, plan.sig) == (0, []) and plan.src is not None
    _finish(cells["union"], "union", full)
    assert realised(cells["union"]) == []  # a union iteration is no path prefix to share

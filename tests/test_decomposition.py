"""A checkpoint's answers in the world's terms (the issue's "reward decomposition per checkpoint"):
the testbed's `Plugin.decompose` (knowledge-token rate, utility per word, length, repeat share, the
parts of r*), the grid's per-cell decomposition and its report table, `world show --checkpoint`.
No training: run directories are written by hand through the RunDir API."""

import numpy as np
import pytest

from conftest import cli, tiny_config
from stagealign import plugins
from stagealign.config import dump_config, load_config
from stagealign.data.schema import prompt_id
from stagealign.grid import grid_metrics
from stagealign.grid.metrics import checkpoint_decomposition
from stagealign.report import decomposition_table, grid_report_markdown, has_decomposition
from stagealign.rundir import RunDir
from stagealign.testbed.summary import COLUMNS, PART_PREFIX, STATS, answer_stats, answer_stats_by_id
from stagealign.testbed.world import World, WorldConfig, WriterSpec

KNOB = dict(scale="small", knowledge_tokens=3, kappa=0.4, wrong_knowledge_penalty=0.7)
KNOB_OVERRIDES = ["world.knowledge_tokens=3", "world.kappa=0.4", "world.wrong_knowledge_penalty=0.7"]


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(**KNOB))


def _hf_config(path, where) -> None:
    """A Hugging Face run's config (policy.model): no plugin provides such runs."""
    path.write_text(f"run_dir: {where / 'run'}\npolicy:\n  model: {where / 'model'}\ndata:\n  pool: "
                    f"{where / 'pool.jsonl'}\njudge:\n  kind: callable\n  path: builtins:len\n")


def _fam_other(world, p):
    fam = world.parse_prompt(p)[0]
    return fam, (fam + 1) % world.cfg.n_families


def test_stats_of_hand_written_answers(world):
    p = world.prompts("eval")[0]
    fam, other = _fam_other(world, p)
    right, wrong = world.knowledge[fam][0], world.knowledge[other][0]
    answers = [f"w1 w2 {right}",        # a right knowledge token, no repeat, 2 content words
               "w3 w3 w4",              # a repeated word, no knowledge
               f"w5 {wrong}",           # another family's knowledge token
               f"{right} {right}"]      # no content word (left out of utility per word), a repeat, right knowledge
    s = answer_stats(world, [(p, a) for a in answers])
    assert s["answers"] == 4
    assert s["knowledge_rate"] == pytest.approx(2 / 4)
    assert s["wrong_knowledge_rate"] == pytest.approx(1 / 4)
    assert s["repeat_share"] == pytest.approx(2 / 4)
    assert s["length"] == pytest.approx((3 + 3 + 2 + 2) / 4)
    # utility per word from World.decompose: its utility part is sum(distinct u) / target_len
    t = world.cfg.target_len
    per_word = [world.decompose(p, a)["utility"] * t / n for a, n in zip(answers[:3], (2, 3, 1))]
    assert s["utility_per_word"] == pytest.approx(np.mean(per_word))
    u = world.utilities(p)  # and from the utilities themselves: a repeat earns nothing but counts as a word
    assert s["utility_per_word"] == pytest.approx(np.mean([(u[1] + u[2]) / 2, (u[3] + u[4]) / 3, u[5]]))
    # one answer alone: the rates are 0 or 1
    alone = answer_stats(world, [(p, answers[1])])
    assert (alone["knowledge_rate"], alone["repeat_share"], alone["wrong_knowledge_rate"]) == (0.0, 1.0, 0.0)
    assert answer_stats(world, [(p, answers[3])])["utility_per_word"] is None
    assert answer_stats(world, [])["answers"] == 0


def test_parts_sum_to_the_reward_and_the_counts_match_the_prices(world):
    ps = world.prompts("eval")[:40]
    w = WriterSpec(name="mixed", quality=1.0, knowledge=0.5, knowledge_rate=0.6, repeat_rate=0.2)
    written = world.write(w, ps, 3, np.random.default_rng(3))
    pairs = [(p, a) for p, row in zip(ps, written) for a in row] + [(ps[0], "w1 <unk> k0_0 k5_1 k5_1")]
    c = world.cfg
    for p, a in pairs:
        d, n = world.decompose(p, a), world.answer_counts(p, a)
        assert sum(d.values()) == pytest.approx(world.reward(p, a), abs=1e-12)
        # answer_counts counts what decompose prices (the stats must not drift from the reward)
        assert d["repetition"] == pytest.approx(-c.repeat_penalty * n["repeats"])
        assert d["knowledge"] == pytest.approx(c.kappa * n["right_knowledge"])
        assert d["wrong_knowledge"] == pytest.approx(-c.wrong_knowledge_penalty * n["wrong_knowledge"])
        assert d["invalid"] == pytest.approx(-c.invalid_penalty * n["invalid"])
        assert d["length"] == pytest.approx(-c.length_penalty * abs(n["tokens"] - c.target_len))
    s = answer_stats(world, pairs)
    parts = {k: v for k, v in s.items() if k.startswith(PART_PREFIX)}
    assert set(parts) == {PART_PREFIX + k for k in world.decompose(ps[0], "w1")}
    assert sum(parts.values()) == pytest.approx(s["reward"])
    assert s["reward"] == pytest.approx(np.mean([world.reward(p, a) for p, a in pairs]))
    assert 0 < s["knowledge_rate"] < 1 and 0 < s["repeat_share"] < 1 and s["wrong_knowledge_rate"] > 0
    assert set(STATS) <= set(s) and set(COLUMNS) <= set(STATS)


def test_by_prompt_id_and_the_plugin_hook(world, tmp_path):
    ps = world.prompts("eval")[:3]
    fam, _ = _fam_other(world, ps[0])
    pairs = [(ps[0], f"w1 {world.knowledge[fam][1]}"), (ps[1], "w2 w2"), (ps[2], "w3 w4 w5")]
    by_text = answer_stats(world, pairs)
    assert answer_stats_by_id(world, [(prompt_id(p), a) for p, a in pairs]) == by_text
    with pytest.raises(ValueError, match="'0123abcd' is not a prompt of this world"):
        answer_stats_by_id(world, [("0123abcd", "w1")])
    cfg = tiny_config(tmp_path / "r", *KNOB_OVERRIDES)
    plugin = plugins.of_run(cfg)
    assert plugin is not None and plugin.decompose is not None and plugin.decompose_columns == COLUMNS
    assert plugin.decompose(cfg, [(prompt_id(p), a) for p, a in pairs]) == by_text
    # a Hugging Face run: no plugin provides it, so nothing decomposes its answers
    hf = tmp_path / "hf.yaml"
    _hf_config(hf, tmp_path)
    assert plugins.of_run(load_config(hf)) is None


# ------------------------------------------------------------------- run directories by hand
def _answers(world, fam_knows: bool, repeat: bool, n_prompts: int = 6) -> dict[str, list[str]]:
    """Two answers per eval prompt: with the prompt's right knowledge token or not, repeating or not."""
    out = {}
    for p in world.prompts("eval")[:n_prompts]:
        fam = world.parse_prompt(p)[0]
        k = f" {world.knowledge[fam][0]}" if fam_knows else ""
        out[prompt_id(p)] = [f"w1 w2 w3{k}", f"w4 w5 {'w4' if repeat else 'w6'}{k}"]
    return out


def _write_run(root, cfg, iterations: list[dict[str, list[str]]], summary: dict | None = None) -> RunDir:
    run = RunDir(root)
    with run.session():
        run.write_config(dump_config(cfg))
        for k, answers in enumerate(iterations):
            run.write_rows(k, "eval_answers.jsonl", ({"prompt_id": pid, "answers": a} for pid, a in answers.items()))
            run.write_stage(k, "evaluate", {"reward": {"mean": 0.0}})
        if summary is not None:
            run.write_summary(summary)
    return run


def _expected(world, answers):
    text = {prompt_id(p): p for p in world.prompts("eval")}
    return answer_stats(world, [(text[pid], a) for pid, row in answers.items() for a in row])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, world):
    root = tmp_path_factory.mktemp("decomp") / "run"
    cfg = tiny_config(root, *KNOB_OVERRIDES)
    it0, it1 = _answers(world, False, True), _answers(world, True, False)
    _write_run(root, cfg, [it0, it1])
    return root, it0, it1


def test_checkpoint_decomposition_reads_the_last_finished_iteration(finished_run, world, tmp_path):
    root, it0, it1 = finished_run
    k, stats = checkpoint_decomposition(root)
    assert k == 1 and stats == _expected(world, it1) and stats["knowledge_rate"] == 1.0
    k0, s0 = checkpoint_decomposition(root, 0)
    assert k0 == 0 and s0["knowledge_rate"] == 0.0 and s0["repeat_share"] == 0.5
    with pytest.raises(ValueError, match="iter_3/eval_answers.jsonl: missing"):
        checkpoint_decomposition(root, 3)


def show(monkeypatch, *args: str):
    """`stagealign world show <args>` in this process (library chatter not silenced: no torch import)."""
    from typer.testing import CliRunner

    import stagealign.cli as cli_mod

    monkeypatch.setattr(cli_mod, "_quiet", lambda: None)
    r = CliRunner().invoke(cli_mod.app, ["world", "show", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


def _values(stdout: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in stdout.splitlines()[1:]}


def test_world_show_checkpoint_prints_the_stats(finished_run, world, monkeypatch):
    root, _, it1 = finished_run
    r = show(monkeypatch, "--checkpoint", str(root))
    assert r.exit_code == 0, r.stderr
    assert "evaluation answers of iteration 1" in r.stdout
    expected, got = _expected(world, it1), _values(r.stdout)
    for key in ("knowledge_rate", "utility_per_word", "length", "repeat_share", "r_knowledge", "reward"):
        assert got[key] == pytest.approx(expected[key], abs=1e-4)
    assert got["knowledge_rate"] == 1.0 and got["answers"] == 12
    r0 = show(monkeypatch, "--checkpoint", str(root), "--iteration", "0")
    assert r0.exit_code == 0 and "iteration 0 (the initial policy)" in r0.stdout
    assert _values(r0.stdout)["repeat_share"] == 0.5 and _values(r0.stdout)["knowledge_rate"] == 0.0


def test_world_show_checkpoint_errors_name_the_path(finished_run, tmp_path, monkeypatch):
    root, _, _ = finished_run
    hf = tmp_path / "hf-run"  # a Hugging Face run: no world to decompose its answers in
    hf.mkdir()
    _hf_config(hf / "config.yaml", tmp_path)
    for args, where in ((["--checkpoint", str(root), "--iteration", "4"], str(root / "iter_4" / "eval_answers.jsonl")),
                        (["--checkpoint", str(tmp_path)], str(tmp_path)),  # a directory without config.yaml
                        (["--checkpoint", str(hf)], f"{hf}: no installed plugin decomposes"),
                        (["--iteration", "1"], "--iteration needs --checkpoint")):
        r = show(monkeypatch, *args)
        assert r.exit_code == 2, (args, r.stdout)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ") and where in r.stderr


def test_world_show_unknown_run_dir_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "no-such-run"
    r = cli("world", "show", "--checkpoint", str(missing))  # the real command line, in its own process
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {missing}: no such run directory"]


# ------------------------------------------------------------------- the grid
def _summary(seed: int, src: str) -> dict:
    row = {"iteration": 1, "source": src, "onpolicy_share": float(src == "onpolicy"), "bs": 0.3, "bs_lo": 0.2,
           "bs_hi": 0.4, "decision": "injection", "pairs": 10, "metric": "reward", "before": 1.0, "after": 1.2,
           "after_lo": 1.1, "after_hi": 1.3, "win_rate_truth": None, "win_rate_judge": None, "kl": None}
    return {"schedule": "path", "method": "dpo", "policy": "weak", "seed": seed, "initial": {"reward": {"mean": 1.0}},
            "iterations": [row]}


def _grid(out, world, hf: bool = False):
    """Seeds 0 and 1, paths off and on (one iteration); the off path's answers learn the knowledge
    token in seed 0 only, the on path's in neither; the initial policy repeats a word."""
    from stagealign import artifacts

    cells = []
    for seed in (0, 1):
        for name, src, knows in (("path-off", "static", seed == 0), ("path-on", "onpolicy", False)):
            d = out / "weak" / "dpo" / f"seed{seed}" / name
            cfg = tiny_config(d, f"seed={seed}", *KNOB_OVERRIDES)
            _write_run(d, cfg, [_answers(world, False, True), _answers(world, knows, False)], _summary(seed, src))
            if hf:
                _hf_config(d / "config.yaml", out)
            cells.append({"policy": "weak", "method": "dpo", "seed": seed, "name": name, "kind": "path",
                          "path": [src], "dir": str(d.relative_to(out))})
    artifacts.write_json(out / "grid-cells.json", {"base_config": {"boundary": {"threshold": 0.5}}, "cells": cells})
    return out


def test_grid_metrics_decompose_every_checkpoint_and_the_report_shows_it(tmp_path, world):
    m = grid_metrics(_grid(tmp_path / "g", world))
    assert m["decomposition_columns"] == list(COLUMNS)
    (g,) = m["groups"]
    off, on = g["cells"]["path-off"]["decomposition"], g["cells"]["path-on"]["decomposition"]
    assert len(off) == 2  # iteration 0 and 1
    assert off[0]["repeat_share"]["mean"] == 0.5 and off[0]["knowledge_rate"]["mean"] == 0.0
    assert off[1]["knowledge_rate"]["values"] == [1.0, 0.0] and off[1]["knowledge_rate"]["mean"] == 0.5
    assert on[1]["knowledge_rate"]["mean"] == 0.0 and on[1]["repeat_share"]["mean"] == 0.0
    expected = _expected(world, _answers(world, True, False))
    assert off[1]["utility_per_word"]["values"][0] == pytest.approx(expected["utility_per_word"])
    assert has_decomposition(m)
    table = decomposition_table(m)
    head, _, *rows = table.splitlines()
    assert head == "| policy | method | path / schedule | checkpoint | knowledge rate | utility per word | length | " \
                   "repeat share |"
    assert rows[0].startswith("| weak | dpo | initial policy | 0 | 0.000 |") and rows[0].endswith("| 0.500 |")
    assert rows[1].startswith("| weak | dpo | path-off | 1 | 0.500 |") and len(rows) == 3
    md = grid_report_markdown(m, {k: f"{k}.png" for k in ("effectiveness", "reward", "bs", "calibration",
                                                          "diversity")})
    assert "## What each checkpoint's answers hold" in md and table in md


def test_grid_without_a_decomposing_plugin_skips_cleanly(tmp_path, world):
    m = grid_metrics(_grid(tmp_path / "hf", world, hf=True))  # Hugging Face configs: no plugin provides them
    (g,) = m["groups"]
    assert m["decomposition_columns"] is None
    assert all(c["decomposition"] is None for c in g["cells"].values())
    assert g["cells"]["path-on"]["final"]["mean"] == pytest.approx(1.2)  # the rest of the metrics stand
    assert not has_decomposition(m)
    md = grid_report_markdown(m, {k: f"{k}.png" for k in ("effectiveness", "reward", "bs", "calibration",
                                                          "diversity")})
    assert "What each checkpoint's answers hold" not in md

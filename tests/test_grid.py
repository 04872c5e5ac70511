"""The path grid on the tiny world: cells, shared prefixes trained once, metrics, resume, spec errors."""

import math

import pytest

from conftest import cli, tiny_config
from stagealign import artifacts
from stagealign.config import ConfigError
from stagealign.grid import GridError, grid_cells, grid_metrics, load_grid_config, parse_grid, run_grid
from stagealign.rundir import RunDir, stage_key

NAMES = ["path-off-off", "path-off-on", "path-on-off", "path-on-on", "auto"]


def shared_grid(tmp_path_factory):
    """weak x dpo x seed 0, 2 iterations, 4 paths + auto, counting the expensive calls.

    Built once per test session (test_report.py uses it too): a second call finds the finished,
    resumable grid and returns the counts recorded when it was built.
    """
    import stagealign.pipeline as pl

    out = tmp_path_factory.getbasetemp() / "shared-grid"
    # auto with a probe rule: its choice is predicted from the paths' measurements and adopted
    base = tiny_config(out, "policy.testbed=weak", "schedule.rule=bs")
    spec = parse_grid({"iterations": 2, "paths": "all", "schedules": ["auto"], "seeds": [0]})
    counts = out / "calls.json"
    if counts.is_file():
        return out, base, spec, grid_metrics(out), artifacts.read_json(counts)
    calls = {"train": 0, "measure": 0, "evaluate": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pl, "train_preference", counting("train", pl.train_preference))
        mp.setattr(pl, "measure", counting("measure", pl.measure))
        mp.setattr(pl, "evaluate", counting("evaluate", pl.evaluate))
        metrics = run_grid(base, spec, out)
    artifacts.write_json(counts, calls)
    return out, base, spec, metrics, calls


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return shared_grid(tmp_path_factory)


def cell(out, name):
    return out / "weak" / "dpo" / "seed0" / name


def test_grid_creates_every_cell(grid):
    out, base, spec, _, _ = grid
    cells = grid_cells(base, spec, out)
    assert [c.name for c in cells] == NAMES
    for c in cells:
        assert c.dir == cell(out, c.name)
        s = artifacts.read_json(c.dir / "summary.json")
        assert len(s["iterations"]) == 2 and s["seed"] == 0 and s["method"] == "dpo"
        done = RunDir(c.dir).done()
        every = [stage_key(0, "evaluate")] + [stage_key(k, s) for k in (1, 2)
                                              for s in ("measure", "decide", "build", "train", "evaluate")]
        assert sorted(done) == sorted(every)
    for name in NAMES[:4]:
        want = name.removeprefix("path-").split("-")
        got = [r["source"] for r in artifacts.read_json(cell(out, name) / "summary.json")["iterations"]]
        assert got == [{"off": "static", "on": "onpolicy"}[w] for w in want]
    manifest = artifacts.read_json(out / "grid-cells.json")
    assert [c["name"] for c in manifest["cells"]] == NAMES
    assert not list(out.rglob("*.tmp")), "no temporary files may remain"


def test_shared_prefixes_are_trained_once(grid):
    out, _, _, _, calls = grid
    # distinct checkpoints: init, off, on, off-off, off-on, on-off, on-on; auto adopts its realised path
    assert calls == {"train": 6, "measure": 3, "evaluate": 7}
    for first in ("off", "on"):
        a, b = RunDir(cell(out, f"path-{first}-off")), RunDir(cell(out, f"path-{first}-on"))
        for f in ("pairs.jsonl", "candidates.jsonl", "evaluate.json", "measure.json", "build.json"):
            assert a.file(1, f).read_bytes() == b.file(1, f).read_bytes(), f
        weights = "model.safetensors"
        assert (a.model(1) / weights).read_bytes() == (b.model(1) / weights).read_bytes()
        # the boundary score before iteration 2 is measured on the shared checkpoint, once
        assert artifacts.read_json(a.stage_path(2, "measure")) == artifacts.read_json(b.stage_path(2, "measure"))
        assert a.file(2, "pairs.jsonl").read_bytes() != b.file(2, "pairs.jsonl").read_bytes()
    # every cell made its own decisions (reason text is its own schedule's)
    assert "auto" in artifacts.read_json(RunDir(cell(out, "auto")).stage_path(1, "decide"))["reason"]
    assert "path step" in artifacts.read_json(RunDir(cell(out, "path-off-on")).stage_path(1, "decide"))["reason"]


def test_grid_json_keys_and_consistent_numbers(grid):
    out, _, _, metrics, _ = grid
    m = artifacts.read_json(out / "grid.json")
    assert m["metric"] == "reward" and m["threshold"] == 0.5
    (g,) = m["groups"]
    assert (g["policy"], g["method"], g["seeds"]) == ("weak", "dpo", [0])
    assert set(g) >= {"cells", "effectiveness", "best_path", "adaptive", "calibration", "diagnostics"}
    assert g["order"] == NAMES and set(g["cells"]) == set(NAMES)
    for name, c in g["cells"].items():
        s = artifacts.read_json(cell(out, name) / "summary.json")
        rewards = [s["initial"]["reward"]["mean"]] + [r["after"] for r in s["iterations"]]
        assert [e["mean"] for e in c["reward"]] == pytest.approx(rewards)
        for k in range(2):  # gain = after - before
            assert c["gain"][k]["mean"] == pytest.approx(rewards[k + 1] - rewards[k])
            assert c["bs"][k]["mean"] == s["iterations"][k]["bs"]
        assert c["final"]["mean"] == pytest.approx(rewards[-1])
        # one seed: intervals are unbounded, stored as null (never NaN/inf in JSON)
        assert c["final"]["lo"] is None and c["final"]["hi"] is None
    e = g["effectiveness"]
    off, on = g["cells"]["path-off-off"]["gain"][0]["mean"], g["cells"]["path-on-on"]["gain"][0]["mean"]
    assert e["static_gain"]["mean"] == pytest.approx(off) and e["onpolicy_gain"]["mean"] == pytest.approx(on)
    assert e["ratio"]["mean"] == pytest.approx(on / off) and e["ratio"]["lo"] is None
    assert e["diff"]["mean"] == pytest.approx(on - off)
    finals = {n: c["final"]["mean"] for n, c in g["cells"].items() if n.startswith("path-")}
    assert g["best_path"]["name"] == max(finals, key=finals.get)
    auto = g["adaptive"]["auto"]
    (realised,) = auto["realised"]
    assert auto["final"]["mean"] == pytest.approx(finals[f"path-{realised}"])  # auto equals its realised path
    assert auto["chose_best"] == [f"path-{realised}" == g["best_path"]["name"]]
    assert auto["regret"]["mean"] == pytest.approx(max(finals.values()) - auto["final"]["mean"])
    # calibration: one point from the initial policy, one from each 1-iteration prefix
    pts = g["calibration"]
    assert [(p["checkpoint"], p["iteration"]) for p in pts] == [("init", 1), ("off", 2), ("on", 2)]
    p0 = pts[0]
    assert p0["diff"] == pytest.approx(on - off) and p0["bs"] == g["cells"]["auto"]["bs"][0]["mean"]
    assert p0["agree"] == ((p0["bs"] >= 0.5) == (p0["diff"] > 0))
    # diagnostics: static pool and on-policy candidates of each checkpoint
    labels = [r["label"] for r in g["diagnostics"]]
    assert labels == ["static pool", "on-policy @ init", "on-policy @ off", "on-policy @ on"]
    for r in g["diagnostics"]:
        assert r["sets"] > 0 and r["pairs"] > 0 and 0 < r["distinct_2"] <= 1 and 0 <= r["edit_diversity"] <= 1
        assert math.isfinite(r["quality_mean"])
    assert metrics == m


def test_rerunning_the_grid_redoes_nothing(grid, monkeypatch):
    out, base, spec, metrics, _ = grid
    import stagealign.pipeline as pl

    def boom(*a, **k):
        raise AssertionError("a finished stage was redone")

    for name in ("train_preference", "measure", "generate", "evaluate"):
        monkeypatch.setattr(pl, name, boom)
    state = RunDir(out).state_path.name  # every cell's record of its finished stages
    states = {p: p.read_text() for p in out.rglob(state)}
    assert run_grid(base, spec, out) == metrics
    assert {p: p.read_text() for p in out.rglob(state)} == states


def test_a_lost_cell_is_rebuilt_from_its_shared_prefix(grid, monkeypatch):
    """Delete path-on-on: the re-run adopts iteration 1 from path-on-off and trains only iteration 2."""
    import shutil

    import stagealign.pipeline as pl

    out, base, spec, metrics, _ = grid
    d = cell(out, "path-on-on")
    summary = artifacts.read_json(d / "summary.json")
    shutil.rmtree(d)
    calls = []
    real = pl.train_preference
    monkeypatch.setattr(pl, "train_preference", lambda *a, **k: calls.append(k["where"]) or real(*a, **k))
    monkeypatch.setattr(pl, "measure", lambda *a, **k: pytest.fail("the boundary score was measured again"))
    assert run_grid(base, spec, out) == metrics
    assert calls == ["iteration 2"]
    def numbers(rows):  # everything but wall-clock timings
        return [{k: v for k, v in r.items() if k not in ("bs_seconds", "bs_cost_vs_epoch")} for r in rows]

    assert numbers(artifacts.read_json(d / "summary.json")["iterations"]) == numbers(summary["iterations"])


def test_unknown_grid_key_is_rejected_with_a_suggestion(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("grid:\n  polices: [weak]\n  seeds: [0]\n")
    with pytest.raises(GridError, match=r"unknown key 'grid.polices'; did you mean 'grid.policies'\?"):
        load_grid_config(f)
    r = cli("grid", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {f}: unknown key 'grid.polices'; did you mean 'grid.policies'?"]


def test_grid_spec_is_parsed_apart_from_the_run_config(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("run_dir: OUT\ntraining:\n  beta: 0.2\ngrid:\n  policies: [weak, strong]\n  methods: [dpo, slic-hf]\n"
                 "  seeds: [0, 1]\n  iterations: 2\n  paths: all\n  schedules: [auto, blend]\n")
    base, spec = load_grid_config(f, ["grid.seeds=[3]", "training.beta=0.3"])
    assert base.training.beta == 0.3 and spec.seeds == [3]
    cells = grid_cells(base, spec, tmp_path / "out")
    assert len(cells) == 2 * 2 * 1 * 6
    c = next(c for c in cells if c.name == "path-on-off" and c.method == "slic-hf" and c.policy == "strong")
    assert c.dir == tmp_path / "out" / "strong" / "slic-hf" / "seed3" / "path-on-off"
    assert (c.cfg.schedule.kind, c.cfg.schedule.path, c.cfg.training.method, c.cfg.seed, c.cfg.iterations) == (
        "path", "on,off", "slic-hf", 3, 2)
    with pytest.raises(ConfigError, match="unknown key 'trainng'"):
        load_grid_config(None, ["trainng.beta=1"])
    with pytest.raises(GridError, match="has 1 steps but the grid runs 2"):
        grid_cells(base, parse_grid({"paths": ["off"], "iterations": 2}), tmp_path)
    with pytest.raises(GridError, match="grid.methods"):
        parse_grid({"methods": ["ppo"]})
    with pytest.raises(GridError, match="either policies"):
        grid_cells(base, parse_grid({"policies": ["weak"], "models": ["gpt2"]}), tmp_path)


def fake_grid(out, gains):
    """A grid directory without training: per seed, one-iteration paths off and on with given gains."""
    cells = []
    for seed, (g_off, g_on) in gains.items():
        for name, src, g in (("path-off", "static", g_off), ("path-on", "onpolicy", g_on)):
            d = out / "weak" / "dpo" / f"seed{seed}" / name
            row = {"iteration": 1, "source": src, "onpolicy_share": 1.0 if src == "onpolicy" else 0.0,
                   "bs": 0.6 + 0.01 * seed, "bs_lo": 0.55, "bs_hi": 0.65, "decision": "fine-tuning", "pairs": 10,
                   "metric": "reward", "before": 1.0, "after": 1.0 + g, "after_lo": 0.9, "after_hi": 1.5,
                   "win_rate_truth": None, "win_rate_judge": None, "kl": None}
            artifacts.write_json(d / "summary.json", {"schedule": "path", "method": "dpo", "policy": "weak",
                                                      "seed": seed, "initial": {"reward": {"mean": 1.0}},
                                                      "iterations": [row]})
            cells.append({"policy": "weak", "method": "dpo", "seed": seed, "name": name, "kind": "path",
                          "path": [src], "dir": str(d.relative_to(out))})
    artifacts.write_json(out / "grid-cells.json", {"base_config": {"boundary": {"threshold": 0.5}}, "cells": cells})
    return out


def test_grid_metrics_over_seeds_have_intervals(tmp_path):
    """Three fake seeds (no training): finite t intervals, paired ratio and difference."""
    out = fake_grid(tmp_path / "g", {0: (0.10, 0.30), 1: (0.12, 0.33), 2: (0.08, 0.28)})
    m = grid_metrics(out)
    (g,) = m["groups"]
    e = g["effectiveness"]
    assert e["static_gain"]["mean"] == pytest.approx(0.1) and e["onpolicy_gain"]["mean"] == pytest.approx(0.91 / 3)
    assert e["ratio"]["mean"] == pytest.approx((0.91 / 3) / 0.1)
    assert e["ratio"]["lo"] < e["ratio"]["mean"] < e["ratio"]["hi"]
    assert e["diff"]["lo"] < e["diff"]["mean"] < e["diff"]["hi"] and e["diff"]["lo"] > 0
    assert g["best_path"]["name"] == "path-on"
    assert g["cells"]["path-on"]["final"]["n"] == 3 and g["cells"]["path-on"]["final"]["lo"] is not None
    assert [p["agree"] for p in g["calibration"]] == [True, True, True]
    cs = m["calibration_summary"]
    assert (cs["points"], cs["agree"], cs["onpolicy_better_share"]) == (3, 1.0, 1.0)


def test_calibration_summary_agreement_and_best_threshold():
    from stagealign.grid import calibration_summary

    def pt(bs, diff, sig=True):
        return {"bs": bs, "diff": diff, "significant": sig, "agree": (bs >= 0.5) == (diff > 0)}

    # on-policy gains more from BS 0.3 upwards: 0.5 misclassifies the two points at 0.3 and 0.4
    points = [pt(0.1, -0.2), pt(0.2, -0.1), pt(0.3, 0.1), pt(0.4, 0.2, sig=False), pt(0.6, 0.3), pt(0.7, 0.2)]
    s = calibration_summary(points, 0.5)
    assert s["points"] == 6 and s["agree"] == pytest.approx(4 / 6)
    assert s["agree_ci"]["lo"] < 4 / 6 < s["agree_ci"]["hi"]
    assert s["significant_points"] == 5 and s["agree_significant"] == pytest.approx(4 / 5)
    assert s["best_threshold"] == pytest.approx(0.25) and s["best_threshold_agree"] == 1.0
    assert s["onpolicy_better_share"] == pytest.approx(4 / 6)
    assert calibration_summary([], 0.5)["agree"] is None

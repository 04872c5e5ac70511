"""The command line: help texts and one-line errors with exit code 2."""

import pytest

from conftest import cli


@pytest.mark.parametrize("cmd", [[], ["run"], ["demo"], ["measure"], ["world", "show"]])
def test_help(cmd):
    r = cli(*cmd, "--help")
    assert r.returncode == 0 and "Usage" in r.stdout


def test_config_typo_is_one_line_exit_2(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainng:\n  beta: 0.1\n")
    r = cli("run", str(f))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {f}: unknown key 'trainng'; did you mean 'training'?"]
    assert "Traceback" not in r.stderr


def test_missing_model_is_one_line_exit_2(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(f'{{"prompt": "q{i}", "responses": ["a{i}", "b{i}"]}}\n' for i in range(40)))
    f = tmp_path / "c.yaml"
    f.write_text(f"run_dir: {tmp_path / 'r'}\npolicy:\n  model: {tmp_path / 'no-such-model'}\n"
                 f"data:\n  pool: {pool}\njudge:\n  kind: callable\n  path: builtins:len\n")
    r = cli("run", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no-such-model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_resume_without_run_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"run_dir: {tmp_path / 'nothing'}\n")
    r = cli("run", str(f), "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr


def test_world_show_prints_pool_quality():
    r = cli("world", "show")
    assert r.returncode == 0
    for name in ("pool-a", "pool-d", "weak", "strong", "reward range"):
        assert name in r.stdout

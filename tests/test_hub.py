"""The one local-path-or-hub-name rule shared by the dry run, the pool loader, the policy and judges."""

from __future__ import annotations

import pytest

from stagealign.hub import is_hub_name, looks_local


@pytest.mark.parametrize("name", ["./x", "/abs/model", "~/models/m", "a/b/c", "dir\\file", "pool.jsonl",
                                  "org/data.parquet", "org/x.JSON"])
def test_paths_are_local(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_local(name)
    assert not is_hub_name(name) and not is_hub_name(name, legacy=True)


def test_org_name_is_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("org/name") and is_hub_name("org/name")
    assert is_hub_name("HuggingFaceH4/ultrafeedback_binarized")


def test_legacy_names_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("gpt2")
    assert not is_hub_name("gpt2") and is_hub_name("gpt2", legacy=True)


def test_an_existing_path_is_local_whatever_its_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert looks_local("org/name") and not is_hub_name("org/name")
    (tmp_path / "gpt2").mkdir()
    assert not is_hub_name("gpt2", legacy=True)


@pytest.mark.parametrize("name", ["a b", "org/-x", "org/", "-org/x", ""])
def test_malformed_names_are_neither(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local(name) and not is_hub_name(name, legacy=True)

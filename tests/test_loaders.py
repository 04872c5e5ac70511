"""Static pool loaders: every format, auto-detection, bad input, save/read round trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from stagealign.artifacts import ArtifactError
from stagealign.data.pool import (
    LoaderError,
    Pool,
    detect_format,
    load_pool,
    read_pool,
    save_pool,
)
from stagealign.data.schema import prompt_id


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def uf_row(instruction: str, answers: list[str], scores=None, **extra) -> dict:
    comps = []
    for i, a in enumerate(answers):
        c = {"model": f"m{i}", "response": a, "annotations": {"helpfulness": {"Rating": "4"}}}
        if scores is not None:
            c["overall_score"] = scores[i]
        comps.append(c)
    return {"source": "evol", "instruction": instruction, "completions": comps, **extra}


def conv(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


UF_ROWS = [
    uf_row("What is 2+2?", ["4", "four", "5"], scores=[9.0, 8.5, 2.0]),
    uf_row("Name a colour.", ["red", "blue"], scores=[7, 6]),
]


# ------------------------------------------------------------------------------------- formats


def test_ultrafeedback(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "uf.jsonl", UF_ROWS), format="ultrafeedback")
    assert isinstance(pool, Pool) and pool.format == "ultrafeedback" and len(pool) == 2
    pid = prompt_id("What is 2+2?")
    cs = pool.sets[pid]
    assert cs.prompt == "What is 2+2?" and cs.candidates == ["4", "four", "5"]
    assert cs.sources == ["m0", "m1", "m2"] and cs.scores == [9.0, 8.5, 2.0]
    assert cs.origin == "static" and cs.iteration == 0
    assert [p.id for p in pool.prompts] == list(pool.sets)
    assert pool.labels is None and pool.skipped == {}
    assert pool.source.endswith("uf.jsonl")


def test_ultrafeedback_fine_grained_and_no_scores(tmp_path):
    rows = [{"prompt": "p1", "completions": [
        {"model": "a", "response": "x", "fine-grained_score": 4.25},
        {"model": "b", "response": "y", "fine-grained_score": 3.0}]},
        {"prompt": "p2", "completions": [{"model": "a", "response": "x"},
                                         {"model": "b", "response": "z"}]}]
    pool = load_pool(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert pool.format == "ultrafeedback"
    assert pool.sets[prompt_id("p1")].scores == [4.25, 3.0]
    assert pool.sets[prompt_id("p2")].scores is None


def test_binarized_plain(tmp_path):
    rows = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "score_chosen": 8, "score_rejected": 3},
        {"prompt": "Q1", "chosen": "good", "rejected": "worse", "score_chosen": 8, "score_rejected": 1},
        {"prompt": "Q2", "chosen": "yes", "rejected": "no"},
    ]
    pool = load_pool(write_jsonl(tmp_path / "b.jsonl", rows), format="binarized")
    q1 = pool.sets[prompt_id("Q1")]
    assert q1.candidates == ["good", "bad", "worse"] and q1.scores == [8.0, 3.0, 1.0]
    assert pool.labels[prompt_id("Q1")] == (0, 1)
    assert pool.label_pairs[prompt_id("Q1")] == [(0, 1), (0, 2)]
    assert pool.labels[prompt_id("Q2")] == (0, 1) and pool.sets[prompt_id("Q2")].scores is None
    assert pool.skipped == {}  # repeating "good" across rows is normal, not a problem


def test_binarized_conversational(tmp_path):
    rows = [
        # ultrafeedback_binarized style: string prompt, full conversations, prompt_id
        {"prompt": "Hi?", "prompt_id": "abc", "chosen": conv("Hi?", "Hello!"),
         "rejected": conv("Hi?", "Go away."), "score_chosen": 9.0, "score_rejected": 2.0},
        # TRL explicit conversational prompt
        {"prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Sum?"}],
         "chosen": [{"role": "assistant", "content": "2"}],
         "rejected": [{"role": "assistant", "content": "3"}]},
        # TRL implicit prompt (no prompt column in this row)
        {"chosen": conv("Why?", "Because."), "rejected": conv("Why?", "Dunno.")},
    ]
    pool = load_pool(write_jsonl(tmp_path / "c.jsonl", rows))
    assert pool.format == "binarized"
    assert pool.sets["abc"].candidates == ["Hello!", "Go away."]
    assert pool.sets["abc"].prompt == "Hi?"
    # the system prompt is kept: the prompt is the conversation, its text a readable rendering
    system = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Sum?"}]
    sum_id = prompt_id("System: be nice\n\nUser: Sum?")
    assert pool.sets[sum_id].candidates == ["2", "3"]
    assert pool.sets[sum_id].prompt == "System: be nice\n\nUser: Sum?"
    by_id = {p.id: p for p in pool.prompts}
    assert by_id[sum_id].messages == tuple(system)
    # a single user turn reads exactly like the same prompt as a string
    assert pool.sets[prompt_id("Why?")].candidates == ["Because.", "Dunno."]
    assert by_id[prompt_id("Why?")].messages is None and by_id["abc"].messages is None
    assert pool.labels == {k: (0, 1) for k in pool.sets}


def test_binarized_implicit_prompt_first_row(tmp_path):
    rows = [{"chosen": conv("Why?", "Because."), "rejected": conv("Why?", "Dunno.")}]
    assert detect_format(rows[0]) == "binarized"
    pool = load_pool(write_jsonl(tmp_path / "c.jsonl", rows))
    assert pool.prompts[0].text == "Why?"


def test_generic_responses(tmp_path):
    rows = [{"id": 7, "prompt": "P", "responses": ["a", "b", "c"], "models": ["x", "y", "z"],
             "scores": [1, 2, 3]},
            {"prompt": "Q", "responses": ["a", "b"]}]
    pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows))
    assert pool.format == "generic"
    assert pool.sets["7"].sources == ["x", "y", "z"] and pool.sets["7"].scores == [1.0, 2.0, 3.0]
    assert pool.sets[prompt_id("Q")].sources == ["unknown", "unknown"]


def test_generic_one_response_per_row(tmp_path):
    rows = [{"id": 1, "prompt": "P", "response": "a", "model": "m1", "score": 0.5},
            {"id": 2, "prompt": "Q", "response": "x"},
            {"id": 3, "prompt": "P", "response": "b", "model": "m2", "score": 0.7},
            {"id": 4, "prompt": "Q", "response": "y"}]
    pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows), format="generic")
    assert [p.text for p in pool.prompts] == ["P", "Q"]  # per-row `id` does not split prompts
    p = pool.sets[prompt_id("P")]
    assert p.candidates == ["a", "b"] and p.sources == ["m1", "m2"] and p.scores == [0.5, 0.7]


def test_reference_answers_travel_with_their_prompts(tmp_path):
    rows = [{"prompt": "P", "responses": ["a", "b"], "reference": "the reference"},
            {"prompt": "Q", "responses": ["a", "b"], "reference": 3},      # not a string: ignored, counted
            {"prompt": "R", "responses": ["a", "b"]}]
    pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows))
    assert [p.reference for p in pool.prompts] == ["the reference", None, None]
    assert pool.skipped == {"bad_reference": 1}
    save_pool(pool, tmp_path / "saved.jsonl")  # the run-dir copy of the pool keeps them
    assert [p.reference for p in read_pool(tmp_path / "saved.jsonl").prompts] == ["the reference", None, None]


def test_parquet_via_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "pool.parquet"
    pd.DataFrame([
        {"prompt": "Hi?", "chosen": conv("Hi?", "Hello!"), "rejected": conv("Hi?", "Bye."),
         "score_chosen": 9.0, "score_rejected": 1.0},
        {"prompt": "Yo?", "chosen": conv("Yo?", "Yo!"), "rejected": conv("Yo?", "No."),
         "score_chosen": 5.0, "score_rejected": 4.0},
    ]).to_parquet(path)
    pool = load_pool(path)
    assert pool.format == "binarized" and len(pool) == 2
    assert pool.sets[prompt_id("Hi?")].candidates == ["Hello!", "Bye."]
    assert pool.sets[prompt_id("Yo?")].scores == [5.0, 4.0]


def test_json_array_and_directory_split(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.json").write_text(json.dumps(UF_ROWS), encoding="utf-8")
    write_jsonl(d / "test.jsonl", [uf_row("Other?", ["a", "b"])])
    assert len(load_pool(d / "train.json")) == 2
    assert [p.text for p in load_pool(d, split="test").prompts] == ["Other?"]
    assert len(load_pool(d)) == 2  # split="train"
    with pytest.raises(LoaderError, match=r"no file for split 'validation'.*test\.jsonl"):
        load_pool(d, split="validation")


def test_directory_of_shards_is_one_split(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    write_jsonl(d / "part-0.jsonl", UF_ROWS[:1])
    write_jsonl(d / "part-1.jsonl", UF_ROWS[1:])
    assert len(load_pool(d)) == 2


def test_hub_name_uses_datasets_without_network(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"prompt": "P", "responses": ["a", "b"]}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    pool = load_pool("someorg/somepool", split="train_prefs")
    assert calls == [("someorg/somepool", "train_prefs")] and len(pool) == 1


def test_hub_failure_is_loader_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def fail(name, split):
        raise ConnectionError("offline\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoaderError, match=r"^someorg/x: not a local path.*ConnectionError: offline$"):
        load_pool("someorg/x")


def test_limit_and_prompt_field(tmp_path):
    rows = [{"question": f"q{i}", "responses": ["a", "b"]} for i in range(5)]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    with pytest.raises(LoaderError, match="cannot detect"):
        load_pool(path)
    pool = load_pool(path, prompt_field="question", limit=3)
    assert [p.text for p in pool.prompts] == ["q0", "q1", "q2"]


def test_limit_does_not_count_rows_past_it(tmp_path):
    rows = [{"prompt": "a", "responses": ["x", "y"]}, {"prompt": "", "responses": ["x", "y"]}]
    pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows), limit=1)
    assert len(pool) == 1 and pool.skipped == {}


# ------------------------------------------------------------------------ structural problems


def test_nonexistent_path(tmp_path):
    with pytest.raises(LoaderError, match=r"missing\.jsonl: no such file$"):
        load_pool(tmp_path / "missing.jsonl")
    with pytest.raises(LoaderError, match="no such file"):
        load_pool("not-a-hub-name")  # no slash: never goes to the hub


def test_broken_json_line_in_the_middle(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(UF_ROWS[0]), '{"instruction": "x", "completions": [', json.dumps(UF_ROWS[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LoaderError, match=r"broken\.jsonl:2: not valid JSON"):
        load_pool(path)


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(UF_ROWS[0]).encode() + b"\n" + '{"instruction": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(LoaderError, match=r"latin1\.jsonl:2: bytes are not valid UTF-8"):
        load_pool(path)
    jpath = tmp_path / "latin1.json"
    jpath.write_bytes(b'[\n{"prompt": "a",\n "responses": ["caf\xe9"]}]')
    with pytest.raises(LoaderError, match=r"latin1\.json:3: bytes are not valid UTF-8"):
        load_pool(jpath)


def test_json_single_object_is_not_rows(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": UF_ROWS}, indent=2), encoding="utf-8")
    with pytest.raises(LoaderError, match=r"obj\.json:1: expected a JSON array.*fields \[data\]"):
        load_pool(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(LoaderError, match=r"fake\.parquet: not a readable Parquet file"):
        load_pool(path)


def test_unrecognisable_first_row(tmp_path):
    path = write_jsonl(tmp_path / "weird.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(LoaderError) as err:
        load_pool(path)
    msg = str(err.value)
    assert "weird.jsonl:1" in msg and "[answer, question]" in msg
    assert "completions" in msg and "chosen" in msg and "responses" in msg
    assert "\n" not in msg


def test_renamed_field_with_explicit_format(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "chosen": "a", "rejected_text": "b"}])
    with pytest.raises(LoaderError, match=r"b\.jsonl:1: format 'binarized' needs field 'rejected'"):
        load_pool(path, format="binarized")
    with pytest.raises(LoaderError, match=r"b\.jsonl:1: cannot detect"):
        load_pool(path)
    uf = write_jsonl(tmp_path / "uf.jsonl", [{"instruction": "q", "completions": [{"text": "a"}]}])
    with pytest.raises(LoaderError, match=r"uf\.jsonl:1: .*'completions\[0\]\.response'.*\[text\]"):
        load_pool(uf)


def test_first_row_missing_field_after_blank_lines_names_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('\n\n{"prompt": "q", "answers": ["a"]}\n', encoding="utf-8")
    with pytest.raises(LoaderError, match=r"g\.jsonl:3: format 'generic' needs field 'responses'"):
        load_pool(path, format="generic")


def test_empty_file_and_nothing_usable(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(LoaderError, match="empty.jsonl: no rows"):
        load_pool(empty)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "responses": ["only one"]}])
    with pytest.raises(LoaderError, match=r"no usable prompts.*too_few_candidates=1"):
        load_pool(bad)


# ------------------------------------------------------------------------- row-level problems


def test_row_problems_are_skipped_and_counted(tmp_path, caplog):
    rows = [
        {"prompt": "ok", "responses": ["a", "b"]},
        {"prompt": "", "responses": ["a", "b"]},                    # empty prompt
        {"prompt": 42, "responses": ["a", "b"]},                    # non-string prompt
        {"responses": ["a", "b"]},                                  # missing prompt
        {"prompt": "no list"},                                      # missing answer list
        {"prompt": "e", "responses": ["a", "  ", "b", 3]},          # empty + non-string answer
        {"prompt": "d", "responses": ["same", "same ", "other"]},   # duplicate (after strip)
        {"prompt": "one", "responses": ["a", "a"]},                 # < 2 distinct
        {"prompt": "mm", "responses": ["a", "b"], "models": ["x"]},  # length mismatch
        {"prompt": "sc", "responses": ["a", "b"], "scores": [1, "high"]},  # bad score -> partial
    ]
    with caplog.at_level(logging.WARNING, logger="stagealign.data"):
        pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows))
    assert [p.text for p in pool.prompts] == ["ok", "e", "d", "sc"]
    assert pool.sets[prompt_id("e")].candidates == ["a", "b"]
    assert pool.sets[prompt_id("d")].candidates == ["same", "other"]
    assert pool.sets[prompt_id("sc")].scores is None
    assert pool.skipped == {
        "bad_answer": 1, "bad_prompt": 1, "bad_score": 1, "duplicate_answer": 2,
        "empty_answer": 1, "empty_prompt": 1, "length_mismatch": 1, "missing_answers": 1,
        "missing_prompt": 1, "partial_scores": 1, "too_few_candidates": 1,
    }
    # the first case of each reason is logged with file:line and field
    assert any("g.jsonl:6: field 'responses[1]': empty answer" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"prompt": "", "responses": ["a", "b"]}, r"g\.jsonl:2: field 'prompt': empty prompt"),
        ({"prompt": ["x"], "responses": ["a", "b"]},
         r"g\.jsonl:2: field 'prompt': expected a string or a conversation, got list"),
        ({"prompt": "q", "responses": ["a", ""]}, r"g\.jsonl:2: field 'responses\[1\]': empty answer"),
        ({"prompt": "q", "responses": ["a", None]}, r"g\.jsonl:2: field 'responses\[1\]': missing"),
        ({"prompt": "q", "responses": ["a", {"t": 1}]}, r"g\.jsonl:2: field 'responses\[1\]': expected a string, got dict"),
        ({"prompt": "q", "responses": "a"}, r"g\.jsonl:2: field 'responses': expected a list, got str"),
        ({"prompt": "q", "responses": ["a"]}, r"g\.jsonl:2: field 'prompt': prompt '[0-9a-f]+' has 1 distinct"),
    ],
)
def test_strict_raises_with_location(tmp_path, row, pattern):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "ok", "responses": ["a", "b"]}, row])
    load_pool(path)  # lenient: skipped
    with pytest.raises(LoaderError, match=pattern):
        load_pool(path, strict=True)


def test_strict_does_not_raise_on_duplicates(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "responses": ["a", "a", "b"]}])
    assert load_pool(path, strict=True).skipped == {"duplicate_answer": 1}


def test_binarized_bad_rows(tmp_path):
    rows = [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q", "chosen": "", "rejected": "worse"},               # empty chosen: pair dropped
        {"prompt": "Q", "chosen": "same", "rejected": "same"},            # no preference
        {"prompt": "R", "chosen": conv("R", "x"), "rejected": [{"role": "user", "content": "R"}]},
        {"prompt": "S", "chosen": 1, "rejected": "y"},
        {"prompt": "T", "chosen": "x"},                                   # rejected missing
    ]
    pool = load_pool(write_jsonl(tmp_path / "b.jsonl", rows))
    q = pool.sets[prompt_id("Q")]
    assert q.candidates == ["good", "bad", "same"]
    assert pool.label_pairs == {prompt_id("Q"): [(0, 1)]}
    assert pool.skipped == {"bad_answer": 2, "chosen_equals_rejected": 1, "empty_answer": 1,
                            "missing_answers": 1}
    strict_path = write_jsonl(tmp_path / "s.jsonl", [rows[0], rows[3]])
    with pytest.raises(LoaderError, match=r"s\.jsonl:2: field 'rejected': conversation has no assistant"):
        load_pool(strict_path, strict=True)


def test_id_conflict(tmp_path):
    rows = [{"prompt_id": "p", "prompt": "one", "responses": ["a", "b"]},
            {"prompt_id": "p", "prompt": "two", "responses": ["c", "d"]}]
    pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows))
    assert pool.sets["p"].candidates == ["a", "b"] and pool.skipped == {"id_conflict": 1}
    with pytest.raises(LoaderError, match=r"g\.jsonl:2: .*id 'p' already used.*g\.jsonl:1"):
        load_pool(tmp_path / "g.jsonl", strict=True)


def test_ultrafeedback_bad_completions(tmp_path):
    rows = [uf_row("q", ["a", "b"], scores=[1, 2]),
            {"instruction": "r", "completions": [
                {"model": "m", "response": "a", "overall_score": 5},
                "not a dict",
                {"model": "n", "response": "b", "overall_score": float("nan")},
                {"model": "o", "response": "c", "overall_score": 3}]}]
    pool = load_pool(write_jsonl(tmp_path / "uf.jsonl", rows))
    r = pool.sets[prompt_id("r")]
    assert r.candidates == ["a", "b", "c"] and r.scores is None  # the NaN made scores partial
    assert pool.skipped == {"bad_answer": 1, "bad_score": 1, "partial_scores": 1}


# ------------------------------------------------------------------------------- round trip


def test_save_read_round_trip(tmp_path):
    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad", "score_chosen": 2, "score_rejected": 1},
            {"prompt": "Q", "chosen": "bad", "rejected": "worse", "score_chosen": 1, "score_rejected": 0},
            {"prompt": "", "chosen": "x", "rejected": "y"}]
    pool = load_pool(write_jsonl(tmp_path / "b.jsonl", rows))
    out = tmp_path / "run" / "pool.jsonl"
    save_pool(pool, out)
    assert (tmp_path / "run" / "pool.meta.json").exists()
    back = read_pool(out)
    assert back == pool
    assert back.label_pairs[prompt_id("Q")] == [(0, 1), (1, 2)]
    # the rows are plain CandidateSet rows
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"prompt_id", "prompt", "candidates", "sources", "origin", "iteration", "scores"}


def test_read_pool_errors(tmp_path):
    with pytest.raises(LoaderError, match="no such file"):
        read_pool(tmp_path / "nope.jsonl")
    bad = tmp_path / "pool.jsonl"
    bad.write_text('{"prompt_id": "a"}\n', encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"pool\.jsonl: row 1: not a CandidateSet"):
        read_pool(bad)
    bad.write_text("{\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"pool\.jsonl:1: not valid JSON"):
        read_pool(bad)


def test_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "Hi", "prompt_id": "h1", "chosen": conv("Hi", "Hello"),
             "rejected": conv("Hi", "Go"), "score_chosen": 8.0, "score_rejected": 8.0}]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "disk"))
    pool = load_pool(tmp_path / "disk", split="train_prefs")
    assert pool.sets["h1"].candidates == ["Hello", "Go"] and pool.labels == {"h1": (0, 1)}
    with pytest.raises(LoaderError, match=r"disk: no split 'train' \(found: train_prefs\)"):
        load_pool(tmp_path / "disk")

"""Candidate and score files of other tools (SimPO, RLHFlow, OpenRLHF, any file through a field
mapping), on-policy candidates generated elsewhere, and chat prompts kept as conversations.

The fixtures in tests/fixtures/ copy each tool's real schema (see tests/fixtures/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_hf

from stagealign.config import ConfigError, load_config
from stagealign.data.formats import detect_format
from stagealign.data.pool import LoaderError, load_onpolicy_candidates, load_pool, read_pool, save_pool
from stagealign.data.schema import Prompt, prompt_id, render_conversation
from stagealign.data.sources import iter_sources
from stagealign.policy import Policy

FIXTURES = Path(__file__).parent / "fixtures"
SIMPO_SET = FIXTURES / "simpo_llama3-ultrafeedback-armorm.parquet"
SIMPO_RM = FIXTURES / "simpo_all_outputs_rm.json"
RLHFLOW_RM = FIXTURES / "rlhflow_iter2_K4_Mreward.json"
RLHFLOW_GEN = FIXTURES / "rlhflow_gen_hf2_0.json"
OPENRLHF_RM = FIXTURES / "openrlhf_rm_output.jsonl"
INHOUSE = FIXTURES / "inhouse_mapped.jsonl"
INHOUSE_FIELDS = {"prompt": "question", "answers": "outputs", "scores": "rm_scores", "id": "uid",
                  "models": "generators"}


def rows_of(path: Path, split: str = "train") -> list[dict]:
    return [row for _, rows in iter_sources(str(path), split) for _, row in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_policy(template: str | None = tiny_hf.CHAT_TEMPLATE, prompt_template: str | None = None) -> Policy:
    """Formatting needs only the tokenizer, so no model is built."""
    return Policy(model=None, tokenizer=tiny_hf.build_tokenizer(template), prompt_template=prompt_template)


# ----------------------------------------------------------------------------- detection


TODAYS_ROWS = {  # the formats that existed before: their rows must keep their format
    "ultrafeedback": {"instruction": "q", "completions": [{"model": "m", "response": "a", "overall_score": 1}]},
    "binarized": {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 1, "score_rejected": 0},
    "generic": {"prompt": "q", "responses": ["a", "b"], "models": ["x", "y"], "scores": [1, 2]},
}


@pytest.mark.parametrize("path, fmt", [
    (SIMPO_SET, "simpo"), (SIMPO_RM, "simpo"), (RLHFLOW_RM, "rlhflow"), (RLHFLOW_GEN, "generic"),
    (OPENRLHF_RM, "openrlhf"),
])
def test_each_tool_file_is_detected_as_its_own_format(path, fmt):
    assert {detect_format(row) for row in rows_of(path)} == {fmt}
    assert load_pool(path).format == fmt


@pytest.mark.parametrize("fmt", sorted(TODAYS_ROWS))
def test_todays_formats_are_still_detected_as_before(fmt):
    assert detect_format(TODAYS_ROWS[fmt]) == fmt


def test_detection_is_not_fooled_by_lookalikes():
    # SimPO's published rows carry chosen/rejected too, RLHFlow's rows are generic rows plus rewards
    simpo_row = rows_of(SIMPO_SET)[0]
    assert {"chosen", "rejected", "prompt"} <= set(simpo_row) and detect_format(simpo_row) == "simpo"
    assert detect_format({"prompt": "q", "responses": ["a"], "rewards": [1.0]}) == "rlhflow"
    # Alpaca-style SFT rows have input/output but are no candidate file
    assert detect_format({"instruction": "Sum", "input": "1 2", "output": "3"}) is None
    # a field mapping is never guessed
    assert detect_format(rows_of(INHOUSE)[0]) is None


# ----------------------------------------------------------------------------------- SimPO


def test_simpo_published_set_keeps_every_candidate_and_its_score():
    pool = load_pool(SIMPO_SET)
    raw = rows_of(SIMPO_SET)
    assert len(pool) == 3 and pool.labels is None  # the scores rank, not the binarized pair
    for row in raw:
        cs = pool.sets[row["prompt_id"]]
        assert cs.prompt == row["prompt"]
        assert cs.candidates == row["all_generated_responses"] and len(cs.candidates) == 5
        assert cs.scores == row["all_rm_scores"]


def test_simpo_scores_are_the_set_scores_under_keep_labels(tmp_path):
    from stagealign.providers import build_provider

    base = [f"policy.model={tmp_path / 'unused'}", f"data.pool={SIMPO_SET}", "judge.kind=callable",
            "judge.path=tiny_hf:score", "data.eval_prompts=1", "boundary.probe_prompts=1"]
    provider = build_provider(load_config(None, [*base, "data.keep_labels=true"]), log=lambda *_: None)
    expected = {row["prompt_id"]: row["all_rm_scores"] for row in rows_of(SIMPO_SET)}
    assert {pid: s.scores for pid, s in provider.pool.items()} == expected
    rejudged = build_provider(load_config(None, base), log=lambda *_: None)
    assert all(s.scores is None and len(s.candidates) == 5 for s in rejudged.pool.values())


def test_simpo_generation_file_json_array():
    pool = load_pool(SIMPO_RM)
    first = rows_of(SIMPO_RM)[0]
    cs = pool.sets[prompt_id(first["prompt"])]
    assert cs.candidates == first["all_generated_responses"] and cs.scores == first["all_rm_scores"]


# --------------------------------------------------------------------------------- RLHFlow


def test_rlhflow_reward_file_in_its_instances_wrapper():
    pool = load_pool(RLHFLOW_RM)
    instances = json.loads(RLHFLOW_RM.read_text(encoding="utf-8"))["instances"]
    assert pool.format == "rlhflow" and len(pool) == 2
    for inst in instances:
        cs = pool.sets[prompt_id(inst["prompt"])]
        assert cs.prompt == inst["prompt"]  # the formatted prompt, read as it is
        assert cs.candidates == inst["responses"] and cs.scores == inst["rewards"]


def test_rlhflow_wrapper_rows_are_located_by_row(tmp_path):
    bad = {"type": "text_only", "instances": [{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 2]},
                                              {"prompt": "q", "responses": ["a", "b"], "rewards": [1]}]}
    path = tmp_path / "rm.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(LoaderError, match=r"rm\.json row 2: field 'rewards': expected a list of 2 items"):
        load_pool(path, strict=True)


def test_rlhflow_generation_prompts_are_conversations():
    pool = load_pool(RLHFLOW_GEN)
    first, second = rows_of(RLHFLOW_GEN)
    text = render_conversation(first["prompt"])
    assert text == ("System: You are a terse assistant.\n\nUser: Capital of Italy?\n\n"
                    "Assistant: Rome.\n\nUser: And of Spain?")
    prompt = next(p for p in pool.prompts if p.id == prompt_id(text))
    assert list(prompt.messages) == first["prompt"] and prompt.text == text
    assert pool.sets[prompt.id].candidates == first["responses"]
    plain = next(p for p in pool.prompts if p.id == prompt_id("Say hi."))  # one user turn: plain text
    assert plain.messages is None and plain.text == second["prompt"][0]["content"]


# -------------------------------------------------------------------------------- OpenRLHF


def test_openrlhf_rows_are_merged_into_one_set_per_prompt():
    pool = load_pool(OPENRLHF_RM)
    rows = rows_of(OPENRLHF_RM)
    assert pool.format == "openrlhf" and len(pool) == 2
    for prompt in pool.prompts:
        mine = [r for r in rows if r["input"] == prompt.text]
        cs = pool.sets[prompt.id]
        assert cs.candidates == [r["output"] for r in mine] and cs.scores == [r["reward"] for r in mine]


def test_openrlhf_iter_dpo_rewards_are_binarized_scores(tmp_path):
    row = {"prompt": "q", "chosen": "good", "chosen_reward": 2.5, "rejected": "bad", "rejected_reward": -1.0}
    pool = load_pool(write_jsonl(tmp_path / "iter_dpo.jsonl", [row]))
    assert pool.format == "binarized" and pool.sets[prompt_id("q")].scores == [2.5, -1.0]


# ---------------------------------------------------------------------------- field mapping


def check_inhouse(pool) -> None:
    rows = rows_of(INHOUSE)
    assert pool.format == "mapped" and [p.id for p in pool.prompts] == [r["uid"] for r in rows]
    for row in rows:
        cs = pool.sets[row["uid"]]
        assert cs.prompt == row["question"] and cs.candidates == row["outputs"]
        assert cs.scores == row["rm_scores"] and cs.sources == row["generators"]


def test_mapped_jsonl():
    check_inhouse(load_pool(INHOUSE, fields=INHOUSE_FIELDS))


def test_mapped_parquet_and_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(rows_of(INHOUSE))
    ds.to_parquet(str(tmp_path / "inhouse.parquet"))
    check_inhouse(load_pool(tmp_path / "inhouse.parquet", fields=INHOUSE_FIELDS))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "disk"))
    check_inhouse(load_pool(tmp_path / "disk", fields=INHOUSE_FIELDS))


def test_mapped_one_answer_per_row(tmp_path):
    rows = [{"q": "P", "a": "x", "r": 1.0}, {"q": "P", "a": "y", "r": 0.0}]
    pool = load_pool(write_jsonl(tmp_path / "m.jsonl", rows), fields={"prompt": "q", "answer": "a", "scores": "r"})
    assert pool.sets[prompt_id("P")].candidates == ["x", "y"] and pool.sets[prompt_id("P")].scores == [1.0, 0.0]


def test_mapping_with_an_unknown_target_is_one_line():
    with pytest.raises(ValueError) as err:
        load_pool(INHOUSE, fields={"prompt": "question", "answer_list": "outputs"})
    assert str(err.value) == ("data.fields: unknown target 'answer_list' (targets: prompt, answers, answer, "
                              "scores, models, id, reference); did you mean 'answers'?")
    with pytest.raises(ConfigError, match=r"data\.fields: unknown target 'answer_list'"):
        load_config(None, ["data.fields={prompt: question, answer_list: outputs}"])
    with pytest.raises(ConfigError, match=r"data\.fields reads rows as format 'mapped'"):
        load_config(None, ["data.fields={prompt: question, answers: outputs}", "data.format=generic"])


def test_mapping_naming_a_field_the_rows_lack_is_one_line():
    fields = {**INHOUSE_FIELDS, "scores": "rm_score"}
    with pytest.raises(LoaderError) as err:
        load_pool(INHOUSE, fields=fields)
    msg = str(err.value)
    assert msg.startswith(f"{INHOUSE}:1: format 'mapped' needs field 'rm_score' (data.fields.scores); found fields [")
    assert "\n" not in msg


def test_mapped_row_missing_a_field_is_skipped_counted_or_raised(tmp_path):
    rows = rows_of(INHOUSE)
    del rows[1]["rm_scores"]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    pool = load_pool(path, fields=INHOUSE_FIELDS)
    assert list(pool.sets) == ["q-001"] and pool.skipped == {"missing_field": 1}
    with pytest.raises(LoaderError, match=r"^.*m\.jsonl:2: field 'rm_scores': missing \(data\.fields\.scores\)"):
        load_pool(path, fields=INHOUSE_FIELDS, strict=True)


# ------------------------------------------------------------------- on-policy candidates


def test_onpolicy_candidates_from_a_file_keep_scores_and_are_marked(tmp_path):
    policy = chat_policy()
    run = [Prompt("run-1", "w1 w2"), Prompt("run-2", "w3 w4"), Prompt("run-3", "w5 w6")]
    # RLHFlow writes the prompt as the policy saw it (templated) with the given run's template
    inst = [{"prompt": policy.format(run[0]), "responses": ["w7", "w8", "w9"], "rewards": [0.5, 0.1, 0.9]},
            {"prompt": "w3 w4", "responses": ["w10", "w11"], "rewards": [1.0, 2.0]},
            {"prompt": "w20 w21", "responses": ["w1", "w2"], "rewards": [0.0, 1.0]}]
    path = tmp_path / "iter2_K3_Mreward.json"
    path.write_text(json.dumps({"type": "text_only", "instances": inst}), encoding="utf-8")

    got = load_onpolicy_candidates(path, 2, prompts=run, render=policy.format)
    assert list(got.sets) == ["run-1", "run-2"] and got.skipped == {"not_in_prompts": 1}
    first = got.sets["run-1"]
    assert first.prompt == "w1 w2"  # the run's prompt, not the file's templated text
    assert first.candidates == ["w7", "w8", "w9"] and first.scores == [0.5, 0.1, 0.9]
    assert first.origin == "onpolicy" and first.iteration == 2 and first.sources == ["policy@1"] * 3

    judged = load_onpolicy_candidates(path, 2, prompts=run, render=policy.format, keep_scores=False)
    assert all(s.scores is None for s in judged.sets.values())
    with pytest.raises(ValueError, match="iteration must be a positive integer"):
        load_onpolicy_candidates(path, 0)


@pytest.mark.parametrize("path, fields", [(SIMPO_SET, None), (OPENRLHF_RM, None), (INHOUSE, INHOUSE_FIELDS)])
def test_onpolicy_candidates_read_every_format(path, fields):
    got = load_onpolicy_candidates(path, 1, fields=fields)
    static = load_pool(path, fields=fields)
    assert [s.candidates for s in got.sets.values()] == [s.candidates for s in static.sets.values()]
    assert all(s.origin == "onpolicy" and s.iteration == 1 and set(s.sources) == {"policy@0"}
               for s in got.sets.values())


# ------------------------------------------------------------------ prompts as conversations


CONVERSATION = [{"role": "system", "content": "w0"}, {"role": "user", "content": "w1 w2"},
                {"role": "assistant", "content": "w3"}, {"role": "user", "content": "w4"}]


def test_policy_formats_a_conversation_with_all_its_turns():
    policy = chat_policy()
    expected = "<system> w0 <end> <user> w1 w2 <end> <assistant> w3 <end> <user> w4 <end> <assistant> "
    assert policy.format(CONVERSATION) == expected
    prompt = Prompt(prompt_id(render_conversation(CONVERSATION)), render_conversation(CONVERSATION),
                    messages=tuple(CONVERSATION))
    assert policy.format(prompt) == expected
    assert policy.format(Prompt("p", "w1 w2")) == policy.format("w1 w2") == "<user> w1 w2 <end> <assistant> "


def test_already_templated_prompts_are_passed_through():
    policy = chat_policy()
    once = policy.format(CONVERSATION)
    assert policy.format(once) == once
    for templated in (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<s>[INST] Hi [/INST]",
    ):
        assert policy.format(templated) == templated
    question = "What does [INST] mean in Mistral prompts?"  # a marker inside a question is content
    assert policy.format(question) == f"<user> {question} <end> <assistant> "


def test_plain_rendering_without_a_chat_template():
    expected = "System: w0\n\nUser: w1 w2\n\nAssistant: w3\n\nUser: w4"
    assert render_conversation(CONVERSATION) == expected
    assert chat_policy(None).format(CONVERSATION) == expected + "\n"
    assert chat_policy(None, "Q: {prompt}\nA:").format(CONVERSATION) == f"Q: {expected}\nA:"
    assert chat_policy(None).format("w1") == "w1\n"


def test_template_without_a_system_role_gets_it_in_the_first_user_turn():
    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                 "{% endif %}" + tiny_hf.CHAT_TEMPLATE)
    assert chat_policy(no_system).format(CONVERSATION[:2]) == "<user> w0\n\nw1 w2 <end> <assistant> "


def test_conversation_prompts_survive_save_and_read(tmp_path):
    rows = [{"prompt": CONVERSATION, "responses": ["a", "b"]}, {"prompt": "plain", "responses": ["a", "b"]}]
    pool = load_pool(write_jsonl(tmp_path / "g.jsonl", rows))
    save_pool(pool, tmp_path / "saved.jsonl")
    back = read_pool(tmp_path / "saved.jsonl")
    assert back == pool and back.prompts[0].messages == tuple(CONVERSATION)


def test_conversation_prompt_ending_with_an_answer_is_refused(tmp_path):
    rows = [{"prompt": "ok", "responses": ["a", "b"]}, {"prompt": CONVERSATION[:3], "responses": ["a", "b"]}]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    assert load_pool(path).skipped == {"bad_prompt": 1}
    with pytest.raises(LoaderError, match=r"g\.jsonl:2: field 'prompt': conversation ends with an assistant turn"):
        load_pool(path, strict=True)


# --------------------------------------------------------------------------------- dry run


def test_dry_run_reads_wrappers_and_mappings(tmp_path):
    from stagealign.dryrun import validate

    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    base = [f"policy.model={model}", "judge.kind=callable", "judge.path=tiny_hf:score"]
    text = "\n".join(validate(load_config(None, [*base, f"data.pool={RLHFLOW_RM}"]), cuda=False))
    assert f"local rlhflow pool {RLHFLOW_RM}, 2 rows" in text
    fields = "{prompt: question, answers: outputs, scores: rm_scores, id: uid, models: generators}"
    mapped = [*base, f"data.pool={INHOUSE}"]
    text = "\n".join(validate(load_config(None, [*mapped, f"data.fields={fields}"]), cuda=False))
    assert f"local mapped pool {INHOUSE}, 2 rows" in text
    typo = fields.replace("rm_scores", "rm_score")
    with pytest.raises(ConfigError, match=r"inhouse_mapped\.jsonl:1: format 'mapped' needs field 'rm_score'"):
        validate(load_config(None, [*mapped, f"data.fields={typo}"]), cuda=False)

"""The real-model path end to end on tiny artifacts built offline: a hub-style model directory
(safetensors + tokenizer), a generic JSONL pool, a callable judge, `Run(cfg).execute()`."""

from __future__ import annotations

import pytest
import torch

import tiny_hf
from stagealign import artifacts
from stagealign.config import load_config
from stagealign.pipeline import Run
from stagealign.policy import Policy, load_policy
from stagealign.rundir import RunDir, stage_key
from stagealign.training.preference import to_trl_rows


# ---------------------------------------------------------------- policy options
def test_chat_template_drives_format_and_trl_rows():
    tok = tiny_hf.build_tokenizer(tiny_hf.CHAT_TEMPLATE)
    chat = Policy(model=None, tokenizer=tok)
    assert chat.uses_chat_template
    assert chat.format("w1 w2") == "<user> w1 w2 <end> <assistant> "
    rows = to_trl_rows(chat, [{"prompt": "w1 w2", "chosen": "w3", "rejected": "w4"}])
    assert rows == [{"prompt": [{"role": "user", "content": "w1 w2"}],
                     "chosen": [{"role": "assistant", "content": "w3"}],
                     "rejected": [{"role": "assistant", "content": "w4"}]}]

    plain = Policy(model=None, tokenizer=tok, prompt_template="Q: {prompt}\nA:")  # an explicit template wins
    assert not plain.uses_chat_template
    assert plain.format("w1 w2") == "Q: w1 w2\nA:"
    assert to_trl_rows(plain, [{"prompt": "w1", "chosen": "w3", "rejected": "w4"}]) == [
        {"prompt": "Q: w1\nA:", "chosen": " w3", "rejected": " w4"}]

    none = Policy(model=None, tokenizer=tiny_hf.build_tokenizer())  # no chat template: "{prompt}\n"
    assert not none.uses_chat_template and none.format("w1") == "w1\n"


def test_conversations_train_with_every_turn_and_templated_prompts_are_not_templated_twice():
    chat = Policy(model=None, tokenizer=tiny_hf.build_tokenizer(tiny_hf.CHAT_TEMPLATE))
    turns = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
             {"role": "user", "content": "w3"}]
    row = to_trl_rows(chat, [{"prompt": "w3", "messages": turns, "chosen": "w4", "rejected": "w5"}])[0]
    assert row["prompt"] == turns  # the earlier turns reach TRL, not only the last user turn
    templated = chat.format("w1 w2")
    row = to_trl_rows(chat, [{"prompt": templated, "chosen": "w4", "rejected": "w5"}])[0]
    assert row == {"prompt": templated, "chosen": "w4", "rejected": "w5"}  # TRL must not wrap it again


def test_load_policy_options(tmp_path, monkeypatch):
    import stagealign.policy as policy_mod

    path = tiny_hf.save_policy_dir(tmp_path / "m", chat_template=tiny_hf.CHAT_TEMPLATE)
    seen = []
    for cls in (policy_mod.AutoModelForCausalLM, policy_mod.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(c, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(c, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    p = load_policy(path, dtype="bfloat16")
    assert seen == [False, False]  # trust_remote_code defaults to False for model and tokenizer
    assert p.model.dtype == torch.bfloat16
    assert p.uses_chat_template and p.tokenizer.padding_side == "left"
    load_policy(path, trust_remote_code=True)
    assert seen[2:] == [True, True]
    assert load_policy(path, dtype="auto").model.dtype == torch.float32  # the checkpoint's own dtype


# ---------------------------------------------------------------- the HF provider, end to end
def _config(tmp_path, name: str, model, pool, *extra: str):
    return load_config(None, [
        f"run_dir={tmp_path / name}", "iterations=1", f"policy.model={model}", f"data.pool={pool}",
        "data.format=generic", "judge.kind=callable", "judge.path=tiny_hf:score", "data.eval_prompts=4",
        "generation.n=3", "generation.max_new_tokens=6", "generation.batch_size=16",
        "boundary.probe_prompts=4", "boundary.min_prompts=2", "boundary.batch_prompts=4",
        "training.batch_size=8", "training.learning_rate=0.01", "schedule.kind=path", *extra])


def _check_run(cfg, summary, origin: str) -> list[dict]:
    d = RunDir(cfg.run_dir)
    assert summary["iterations"][0]["source"] == origin
    pairs = artifacts.read_jsonl(d.file(1, "pairs.jsonl"))
    assert pairs and {p["origin"] for p in pairs} == {origin}
    assert all({"prompt", "chosen", "rejected"} <= set(p) for p in pairs)
    files = {p.name for p in d.model(1).iterdir()}
    assert "model.safetensors" in files and not any(f.startswith("adapter_") for f in files)
    done = d.done()
    assert all(stage_key(1, stage) in done for stage in ("measure", "decide", "build", "train", "evaluate"))
    return pairs


def test_hf_run_static_path_reranks_the_pool_with_the_judge(tmp_path):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40, reversed_scores=True)
    cfg = _config(tmp_path, "off", model, pool, "schedule.path=off")
    summary = Run(cfg).execute()
    pairs = _check_run(cfg, summary, "static")
    assert summary["iterations"][0]["bs"] is not None and summary["initial"]["judge_score"]["mean"] is not None
    # the pool's own scores rank answers the other way round; keep_labels=false re-ranks with the judge
    for p in pairs:
        chosen, rejected = tiny_hf.score([p["prompt"]] * 2, [p["chosen"], p["rejected"]])
        assert chosen >= rejected
    start = load_policy(model).model.state_dict()
    after = load_policy(RunDir(tmp_path / "off").model(1)).model.state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start)


def test_hf_run_onpolicy_path_with_chat_template_and_lora_resumes(tmp_path):
    model = tiny_hf.save_policy_dir(tmp_path / "sft", chat_template=tiny_hf.CHAT_TEMPLATE)
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    cfg = _config(tmp_path, "on", model, pool, "schedule.path=on", "policy.lora.r=4", "policy.lora.alpha=8",
                  "policy.lora.target_modules=[q_proj,v_proj]")
    summary = Run(cfg).execute()
    pairs = _check_run(cfg, summary, "onpolicy")
    cand = artifacts.read_jsonl(RunDir(tmp_path / "on").file(1, "candidates.jsonl"))
    assert all(s["sources"] == ["policy@0"] * len(s["candidates"]) for s in cand)
    trained = load_policy(RunDir(tmp_path / "on").model(1))
    assert trained.uses_chat_template  # the tokenizer and its template travel with every iteration
    start = load_policy(model).model.state_dict()
    changed = {k for k, v in trained.model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"}  # LoRA
    assert summary["iterations"][0]["pairs"] == len(pairs)

    again = Run(cfg).execute()  # everything recorded: a second execute only reads the artifacts
    assert again["iterations"] == summary["iterations"]


def test_hf_run_with_lora_races_and_continues_the_winner_copy_as_lora(tmp_path):
    # auto's default rule on a real-model config: the race's copies and the continuation are all
    # LoRA, merged; the continuation gets policy 0 as its explicit reference (the copy has moved)
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=48)
    cfg = _config(tmp_path, "race", model, pool, "schedule.kind=auto", "schedule.rule=race", "policy.lora.r=4",
                  "policy.lora.alpha=8", "policy.lora.target_modules=[q_proj,v_proj]")
    summary = Run(cfg).execute()
    d = RunDir(cfg.run_dir)
    raced, train = d.read_stage(1, "decide")["race"], d.read_stage(1, "train")
    assert raced["kept"] and train["continued_race_copy"] == raced["winner"] == summary["iterations"][0]["source"]
    assert train["steps"] > 0 and not d.race_copy(1).exists()
    start = load_policy(model).model.state_dict()
    trained = load_policy(d.model(1)).model.state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert changed == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"}


def test_hf_run_too_small_pool_is_a_clear_error(tmp_path):
    model = tiny_hf.save_policy_dir(tmp_path / "sft")
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=2)
    cfg = _config(tmp_path, "tiny", model, pool, "schedule.path=off")
    with pytest.raises(ValueError, match="too few to hold out probe and eval prompts"):
        Run(cfg).execute()

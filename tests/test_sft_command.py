"""`stagealign sft`: a tiny causal LM fine-tuned with TRL's SFTTrainer into a run's initial policy.

Tiny models from `tiny_hf` (built from configs, no downloads); datasets written here as JSON lines
or a `save_to_disk` folder. What a user relies on: the loss goes down (the saved policy gives the
completions a higher likelihood than the base model did), the output directory is a policy
`load_policy` reads with its prompt format, a run config starts from it, and a wrong column or row
stops the command with one line naming the file, row and field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

import tiny_hf  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from stagealign.config import ConfigError, load_config  # noqa: E402
from stagealign.policy import load_configured_policy, load_policy  # noqa: E402

GOOD = sorted(tiny_hf.GOOD)
TRAIN = {"training.learning_rate": 0.01, "training.epochs": 3, "training.batch_size": 4, "training.max_length": 64,
         "training.warmup_ratio": 0.0}


def _completion(i: int) -> str:
    return f"{GOOD[i % 8]} {GOOD[(i + 3) % 8]} {GOOD[(i + 5) % 8]}"


def _write_prompt_completion(path: Path, n: int = 32) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": tiny_hf.prompt_text(i), "completion": _completion(i), "id": i}) + "\n")
    return path


def _messages(n: int = 32) -> list[dict]:
    return [{"messages": [{"role": "user", "content": tiny_hf.prompt_text(i)},
                          {"role": "assistant", "content": _completion(i)}],
             "prompt": tiny_hf.prompt_text(i)}  # UltraChat-style extra column: must not turn the row into prompt-completion
            for i in range(n)]


def _sft(*args: str):
    """`stagealign sft ...` in this process: (exit code, stdout, stderr)."""
    from stagealign.cli import app

    r = CliRunner().invoke(app, ["sft", *map(str, args)])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def _config(tmp_path: Path, model: Path, data: Path | str, out: Path, **extra) -> Path:
    cfg = {"output_dir": str(out), "seed": 0, "policy": {"model": str(model)}, "data": {"path": str(data)}, **extra}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _completion_nll(policy, rows: list[tuple[str, str]]) -> float:
    """Mean negative log-likelihood per completion token given the prompt in the policy's format
    (a chat-template policy's completion ends its turn with "<end>", as the template renders it)."""
    tok, model = policy.tokenizer, policy.model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt, completion in rows:
            head = policy.format(prompt)
            tail = completion + (" <end>" if policy.uses_chat_template else "")
            p_ids = tok(head)["input_ids"]
            ids = tok(head + " " + tail)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits[:-1].float(), -1)
            targets = torch.tensor(ids[1:])
            token_lp = logp[torch.arange(len(targets)), targets][len(p_ids) - 1:]
            total -= float(token_lp.sum())
            count += len(token_lp)
    return total / count


def test_sft_command_fine_tunes_saves_a_policy_and_a_run_starts_from_it(tmp_path):
    base = tiny_hf.save_policy_dir(tmp_path / "base", chat_template=tiny_hf.CHAT_TEMPLATE)
    data = _write_prompt_completion(tmp_path / "sft.jsonl")
    out = tmp_path / "policies" / "sft-1"
    code, stdout, stderr = _sft(_config(tmp_path, base, data, out), *(f"{k}={v}" for k, v in TRAIN.items()))
    assert code == 0, stderr

    # the next step is printed, and the saved summary says what was trained
    assert f"policy.model: {out}" in stdout
    summary = json.loads((out / "sft.json").read_text())
    assert summary["rows"] == 32 and summary["format"] == "prompt-completion" and summary["steps"] == 24
    assert summary["final_loss"] < summary["first_loss"]

    # a policy directory: safetensors only, the chat template kept, no temporaries left beside it
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert [p.name for p in out.parent.iterdir()] == ["sft-1"]
    tuned, initial = load_policy(out), load_policy(base)
    assert tuned.uses_chat_template and tuned.format("w1 w2") == initial.format("w1 w2") == "<user> w1 w2 <end> <assistant> "

    # the loss went down where it matters: the completions, in the format the loop prompts with
    rows = [(tiny_hf.prompt_text(i), _completion(i)) for i in range(32)]
    before, after = _completion_nll(initial, rows), _completion_nll(tuned, rows)
    assert after < before - 1.0, (before, after)  # nats per completion token

    # a run config starts from it
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=8)
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(f"run_dir: {tmp_path / 'run'}\npolicy:\n  model: {out}\ndata:\n  pool: {pool}\n"
                       "judge:\n  kind: callable\n  path: tiny_hf:score\n")
    cfg = load_config(run_cfg)
    start = load_configured_policy(cfg.policy, cfg.policy.model, initial=True)
    assert cfg.policy.model == str(out) and start.format("w3") == tuned.format("w3")
    assert torch.equal(start.model.lm_head.weight, tuned.model.lm_head.weight)


def test_sft_chat_rows_from_a_saved_dataset_with_a_given_chat_template(tmp_path):
    from datasets import Dataset

    from stagealign.sft import load_sft_config, run_sft

    base = tiny_hf.save_policy_dir(tmp_path / "base")  # no chat template: a base model like Pythia
    Dataset.from_list(_messages()).save_to_disk(str(tmp_path / "chats"))
    out = tmp_path / "chat-sft"
    cfg_path = _config(tmp_path, base, tmp_path / "chats", out)
    overrides = [f"{k}={v}" for k, v in TRAIN.items()]
    with pytest.raises(ValueError) as err:  # chat rows need a chat template
        run_sft(load_sft_config(cfg_path, overrides), log=lambda m: None)
    assert "no chat template" in str(err.value) and "chat_template" in str(err.value)
    assert not out.exists()

    template = tmp_path / "template.jinja"
    template.write_text(tiny_hf.CHAT_TEMPLATE)
    summary = run_sft(load_sft_config(cfg_path, [*overrides, f"chat_template={template}"]), log=lambda m: None)
    assert summary["format"] == "messages" and summary["rows"] == 32 and summary["uses_chat_template"]
    tuned = load_policy(out)
    assert tuned.tokenizer.chat_template == tiny_hf.CHAT_TEMPLATE  # saved with the policy, so the loop uses it
    rows = [(tiny_hf.prompt_text(i), _completion(i)) for i in range(32)]
    initial = load_policy(base)
    initial.tokenizer.chat_template = tiny_hf.CHAT_TEMPLATE
    assert _completion_nll(tuned, rows) < _completion_nll(initial, rows) - 1.0


def test_bad_column_row_or_key_is_one_line_naming_it(tmp_path):
    base = tmp_path / "no-model-needed"  # every check below fails before a model is loaded
    data = _write_prompt_completion(tmp_path / "sft.jsonl")
    cfg = _config(tmp_path, base, data, tmp_path / "out")

    code, _, stderr = _sft(cfg, "data.prompt_column=question")
    assert code == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        f"error: {data}:1: no column 'question' (data.prompt_column); columns: completion, id, prompt"]

    lines = data.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "w1 w2", "completion": "  "})
    data.write_text("\n".join(lines) + "\n")
    code, _, stderr = _sft(cfg)
    assert code == 2 and stderr.strip().splitlines() == [f"error: {data}:3: field 'completion' is empty"]

    code, _, stderr = _sft(cfg, "training.learning_rat=0.1")
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"error: {cfg}: unknown key 'training.learning_rat'; did you mean 'learning_rate'?"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not a policy")
    code, _, stderr = _sft(cfg, f"output_dir={other}")
    assert code == 2 and "not a stagealign policy directory" in stderr and (other / "keep.txt").is_file()


def test_sft_config_is_its_own_section_model(tmp_path):
    from stagealign.sft import load_sft_config

    cfg = load_sft_config(None, ["policy.model=org/model", "data.path=org/chats", "data.split=train_sft"])
    assert cfg.training.learning_rate == 2e-5 and cfg.data.split == "train_sft"
    with pytest.raises(ConfigError, match="synthetic world"):
        load_sft_config(None, ["policy.testbed=weak", "data.path=x.jsonl"])
    with pytest.raises(ConfigError, match="data"):
        load_sft_config(None, ["policy.model=org/model"])

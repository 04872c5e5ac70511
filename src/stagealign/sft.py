"""`stagealign sft`: fine-tune a causal LM into the initial policy a run starts from.

The paper SFT'd Phi-2, Pythia and Qwen before aligning them; this command does that step with
TRL's `SFTTrainer` (`training.sft.fine_tune`) and saves the result as a plain safetensors policy
directory (`Policy.save`, atomic) holding the prompt format, so a run config only needs
``policy.model: <output_dir>``.

The dataset (`data.path`: a local file, a folder, a ``save_to_disk`` folder or a hub name, read
by `data.sources.iter_sources`) holds either chat rows (a ``messages`` column of
``{role, content}`` turns, rendered by TRL with the model's chat template) or prompt-completion
rows (``prompt`` / ``completion`` columns, TRL's prompt-completion format, loss on the
completion only). Prompt strings are shaped exactly as the loop will prompt the policy
(`Policy.format`): as a one-turn chat when the tokenizer has a chat template, else in the plain
``prompt_template``. Why this matters: on-policy samples and DPO training both use that format, so
an SFT in any other format starts the loop off-distribution.

Bad input stops before any training, with one line naming the row (``file:line``) and the
field.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stagealign.config import (
    ConfigError,
    SFTRunConfig,
    apply_overrides,
    format_validation_error,
    read_yaml_mapping,
)

MESSAGES, PROMPT_COMPLETION = "messages", "prompt-completion"


class SFTDataError(ValueError):
    """A dataset row or column the SFT command cannot use; the message names the row and the field."""


def load_sft_config(path: str | Path | None, overrides: list[str] | None = None) -> SFTRunConfig:
    """YAML + ``a.b=c`` overrides -> `SFTRunConfig`, with `load_config`'s rules and messages
    (unknown keys are errors naming the key and the closest valid one)."""
    data, source = read_yaml_mapping(path)
    data = apply_overrides(data, overrides or [])
    try:
        return SFTRunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, model=SFTRunConfig)) from None


# ------------------------------------------------------------------------------------------- rows
def _turns(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """A list of ``{role, content}`` chat turns with string fields, or SFTDataError."""
    if not isinstance(value, list) or not value:
        raise SFTDataError(f"{where}: field {field!r}: expected a non-empty list of {{role, content}} turns, "
                           f"got {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                and isinstance(turn.get("content"), str)):
            raise SFTDataError(f"{where}: field {field!r}, turn {i}: expected {{role: str, content: str}}, "
                               f"got {str(turn)[:80]}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _text_or_turns(value: Any, where: str, field: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise SFTDataError(f"{where}: field {field!r} is empty")
        return value
    return _turns(value, where, field)


def detect_format(row: dict[str, Any], where: str, data: Any) -> str:
    """`MESSAGES` or `PROMPT_COMPLETION` from the first row's columns. A column named explicitly
    in the config must exist; otherwise a messages column wins over prompt + completion."""
    columns = ", ".join(sorted(map(str, row))) or "none"
    named = data.model_fields_set
    for key in ("messages_column", "prompt_column", "completion_column"):
        name = getattr(data, key)
        if key in named and name not in row:
            raise SFTDataError(f"{where}: no column {name!r} (data.{key}); columns: {columns}")
    if data.messages_column in row and not ({"prompt_column", "completion_column"} & named):
        return MESSAGES
    if data.prompt_column in row and data.completion_column in row:
        return PROMPT_COMPLETION
    raise SFTDataError(f"{where}: neither a {data.messages_column!r} column (data.messages_column) nor "
                       f"{data.prompt_column!r} and {data.completion_column!r} columns (data.prompt_column, "
                       f"data.completion_column); columns: {columns}")


def read_rows(data: Any) -> tuple[str, list[dict], str]:
    """(format, rows, the first row's location) of the dataset `data` (an `SFTDataConfig`), at most
    `data.max_rows` rows, each checked (`clean_row`) before any model is loaded."""
    from stagealign.data.sources import iter_sources

    kind, first, out = None, None, []
    for _label, rows in iter_sources(data.path, data.split):
        for where, row in rows:
            if kind is None:
                kind, first = detect_format(row, where, data), where
            out.append(clean_row(kind, row, where, data))
            if kind == PROMPT_COMPLETION and isinstance(out[-1]["prompt"], str) != isinstance(out[0]["prompt"], str):
                shape = "text" if isinstance(out[0]["prompt"], str) else "chat turns"
                raise SFTDataError(f"{where}: field {data.prompt_column!r} is not {shape} like the first row's ({first})")
            if data.max_rows is not None and len(out) >= data.max_rows:
                return kind, out, first
    if kind is None:
        raise SFTDataError(f"{data.path}: no rows (split {data.split!r})")
    return kind, out, first


def clean_row(kind: str, row: dict[str, Any], where: str, data: Any) -> dict[str, Any]:
    """``{"messages": turns}`` or ``{"prompt", "completion"}`` (text or turns) of one row.

    ``messages`` rows keep only their turns: other columns (UltraChat's ``prompt``) would make TRL
    read the row as prompt-completion.
    """
    needed = [data.messages_column] if kind == MESSAGES else [data.prompt_column, data.completion_column]
    for column in needed:
        if column not in row:
            raise SFTDataError(f"{where}: no field {column!r} (the dataset's first row has it)")
    if kind == MESSAGES:
        turns = _turns(row[data.messages_column], where, data.messages_column)
        if not any(t["role"] == "assistant" for t in turns):
            raise SFTDataError(f"{where}: field {data.messages_column!r} has no assistant turn to learn")
        return {"messages": turns}
    prompt = _text_or_turns(row[data.prompt_column], where, data.prompt_column)
    completion = _text_or_turns(row[data.completion_column], where, data.completion_column)
    if isinstance(prompt, str) != isinstance(completion, str):
        raise SFTDataError(f"{where}: fields {data.prompt_column!r} and {data.completion_column!r} must both be "
                           "text or both be chat turns")
    return {"prompt": prompt, "completion": completion}


def trl_rows(policy: Any, rows: list[dict]) -> list[dict]:
    """Rows in TRL's formats, text prompts shaped as `policy.format` shapes them for the loop: a
    one-turn chat when the policy prompts through its chat template, else the text it formats."""
    out = []
    for row in rows:
        if "messages" in row or not isinstance(row["prompt"], str):
            out.append(row)
        elif policy.uses_chat_template:
            out.append({"prompt": [{"role": "user", "content": row["prompt"]}],
                        "completion": [{"role": "assistant", "content": row["completion"]}]})
        else:
            out.append({"prompt": policy.format(row["prompt"]), "completion": row["completion"]})
    return out


def _chats(rows: list[dict]) -> bool:
    return bool(rows) and ("messages" in rows[0] or not isinstance(rows[0]["prompt"], str))


def _check_template(cfg: SFTRunConfig, policy: Any, rows: list[dict], first: str) -> None:
    """Chat rows need a chat template, and the loop must prompt the policy through it too."""
    if not _chats(rows):
        return
    if not getattr(policy.tokenizer, "chat_template", None):
        raise SFTDataError(f"{first}: chat rows, but the tokenizer of {cfg.policy.model} has no chat template; "
                           "set chat_template (a Jinja template, or a file holding one) or use text prompts")
    if policy.prompt_template is not None:
        raise SFTDataError(f"{first}: chat rows are rendered with the chat template, but policy.prompt_template is "
                           "set, so the loop would prompt the policy in another format; unset one of them")


def _template_text(value: str) -> str:
    """`chat_template`: a Jinja template (it has ``{{`` or ``{%``), else the file holding one."""
    if "{{" in value or "{%" in value:
        return value
    try:
        return Path(value).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"chat_template: {value!r} is neither a Jinja template nor a readable file ({exc})") from None


# ------------------------------------------------------------------------------------------ output
def _check_output(out: Path) -> None:
    """Refuse to replace a directory that is not a policy (a typo must not delete someone's files)."""
    from stagealign.policy import FORMAT_FILE

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / FORMAT_FILE).is_file())):
        raise ConfigError(f"output_dir: {out} exists and is not a stagealign policy directory; choose another "
                          "output_dir (a policy saved there before is replaced)")


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def next_step(output_dir: str | Path) -> str:
    """What to put into a run config to start the loop from the fine-tuned policy."""
    return f"policy.model: {output_dir}"


def run_sft(cfg: SFTRunConfig, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Fine-tune `cfg.policy.model` on `cfg.data`, save it to `cfg.output_dir`; returns a summary
    (rows, format, steps, first and last logged loss, seconds, output_dir, next_step)."""
    from stagealign import distributed
    from stagealign.artifacts import write_json
    from stagealign.boundary import context_length
    from stagealign.policy import load_configured_policy
    from stagealign.training.sft import fine_tune

    out = Path(cfg.output_dir)
    _check_output(out)
    if cfg.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        from stagealign.tracking import WANDB_MISSING

        raise ConfigError(WANDB_MISSING)
    distributed.refuse_lora_under_zero3(cfg.policy.lora)
    kind, rows, first = read_rows(cfg.data)
    policy = load_configured_policy(cfg.policy, cfg.policy.model, initial=True)
    if cfg.chat_template:
        policy.tokenizer.chat_template = _template_text(cfg.chat_template)
    _check_template(cfg, policy, rows, first)
    data_rows = trl_rows(policy, rows)
    settings = cfg.training
    ctx = context_length(policy)  # rows longer than the model's positions are cut to them, never past
    if ctx is not None and (settings.max_length is None or settings.max_length > ctx):
        settings = settings.model_copy(update={"max_length": ctx})
    log(f"[sft] {len(data_rows)} {kind} rows from {cfg.data.path}; fine-tuning {cfg.policy.model}")

    from datasets import Dataset

    keep_logs = cfg.report_to != "none"
    work = nullcontext(str(out) + ".logs") if keep_logs else tempfile.TemporaryDirectory(prefix="stagealign-sft-")
    with work as work_dir:
        res = fine_tune(policy, Dataset.from_list(data_rows), settings, seed=cfg.seed, work_dir=Path(work_dir),
                        report_to=cfg.report_to, run_name=out.name, lora=cfg.policy.lora, progress=progress)
    weights = distributed.full_state_dict(policy.model)  # sharded (ZeRO-3 / FSDP) weights gathered
    summary = {"output_dir": str(out), "model": cfg.policy.model, "data": cfg.data.path, "format": kind,
               "rows": len(data_rows), "steps": res.steps, "first_loss": res.losses[0] if res.losses else None,
               "final_loss": res.losses[-1] if res.losses else res.train_loss, "train_loss": res.train_loss,
               "seconds": res.seconds, "uses_chat_template": policy.uses_chat_template, "next_step": next_step(out)}
    if distributed.is_main():
        policy.save(out, state_dict=weights)
        write_json(out / "sft.json", summary)  # provenance: which data made this initial policy
    distributed.barrier()
    log(f"[sft] {res.steps} steps, loss {_loss(summary['first_loss'])} -> {_loss(summary['final_loss'])}, "
        f"{res.seconds:.1f}s; saved {out}")
    return summary


__all__ = ["MESSAGES", "PROMPT_COMPLETION", "SFTDataError", "clean_row", "detect_format", "load_sft_config",
           "next_step", "read_rows", "run_sft", "trl_rows"]

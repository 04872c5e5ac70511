"""A policy = a causal LM + its tokenizer + the prompt format both generation and training use.

Keeping the format in one object is what makes on-policy samples and TRL training see the same
text: a chat template when the tokenizer has one, a plain template otherwise.

Every saved policy is a plain safetensors causal LM (a LoRA adapter is merged before saving), so
the initial checkpoint, every iteration's `model/` and any hub model load through one path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from stagealign.artifacts import atomic_path
from stagealign.data.schema import Prompt, render_conversation
from stagealign.hub import is_hub_name

FORMAT_FILE = "stagealign_format.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PolicyError(ValueError):
    """The policy cannot be loaded; the message names the path."""


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompt_template: str | None = None  # used when the tokenizer has no chat template
    trust_remote_code: bool = False  # what the user allowed at load; engines that reload it (vLLM) follow it

    _marks: tuple[str | None, tuple[str, str]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def uses_chat_template(self) -> bool:
        return self.prompt_template is None and bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, prompt: str | Sequence[Mapping[str, Any]] | Prompt) -> str:
        """The exact text the model is conditioned on, for a prompt string, a conversation (a list of
        ``{role, content}`` messages ending with the turn to answer) or a `Prompt` (its conversation
        when it has one, else its text).

        With a chat template: the template applied to the conversation (a string is one user turn)
        with the generation prompt (``apply_chat_template(messages, add_generation_prompt=True)``).
        A template that refuses a system turn (Gemma's) gets the system prompt at the head of the
        first user turn, separated by a blank line. Without one: the plain template (``{prompt}``
        and a newline by default) around the string, or around the conversation's
        `schema.render_conversation` rendering. A string that was already formatted with a chat
        template (`is_templated`: the prompts of RLHFlow's, OpenRLHF's and SimPO's generation files)
        is returned unchanged, never templated twice.
        """
        if isinstance(prompt, Prompt):
            prompt = list(prompt.messages) if prompt.messages else prompt.text
        if isinstance(prompt, str):
            if self.is_templated(prompt):
                return prompt
            messages, plain = [{"role": "user", "content": prompt}], prompt
        else:
            messages = [dict(m) for m in prompt]
            plain = render_conversation(messages)
        if self.uses_chat_template:
            return _apply_chat_template(self.tokenizer, messages)
        return (self.prompt_template or "{prompt}\n").format(prompt=plain)

    def is_templated(self, text: str) -> bool:
        """True when `text` already went through a chat template, so `format` must not template it
        again: it starts (after whitespace) with the tokenizer's BOS token, with the opening of a
        common chat template (`TEMPLATE_OPENINGS`: ChatML, Llama 3, Llama 2 / Mistral, Gemma,
        Zephyr / Phi-3) or with this policy's own template's opening, or it ends with this
        template's generation prompt (e.g. ``<|im_start|>assistant``).

        Openings, not markers anywhere: a question that mentions ``[INST]`` is still a question.
        """
        head, tail = text.lstrip(), text.rstrip()
        bos = getattr(self.tokenizer, "bos_token", None)
        if isinstance(bos, str) and bos.strip() and head.startswith(bos):
            return True
        if head.startswith(TEMPLATE_OPENINGS):
            return True
        opening, generation = self._template_marks()
        return bool(opening and head.startswith(opening)) or bool(generation and tail.endswith(generation))

    def _template_marks(self) -> tuple[str, str]:
        """(opening, generation prompt) of this policy's chat template: the text it writes before
        a user turn's content and after it, found by rendering a probe once (per template)."""
        template = getattr(self.tokenizer, "chat_template", None) if self.uses_chat_template else None
        if self._marks is None or self._marks[0] != template:
            marks = ("", "")
            if template:
                probe = "STAGEALIGNPROBE"
                try:
                    text = _apply_chat_template(self.tokenizer, [{"role": "user", "content": probe}])
                except Exception:  # noqa: BLE001 - a template that cannot render a probe marks nothing
                    text = ""
                if probe in text:
                    before, _, after = text.partition(probe)
                    marks = (before.strip(), after.strip())
            self._marks = (template, marks)
        return self._marks[1]

    @property
    def has_adapter(self) -> bool:
        """True while `model` is a PEFT model (a LoRA adapter not merged yet)."""
        return is_peft_model(self.model)

    def save(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Atomic save: safetensors weights, tokenizer and the prompt format.

        A LoRA adapter still on the model is merged first (`merge_adapter`, exactly, in float32):
        a saved policy is always a plain causal LM, loadable by `load_policy` and by any tool
        without PEFT, and the weights are saved in the model's dtype, so a merged half-precision
        base is saved in float32 with its whole update. `state_dict` replaces the model's own
        weights when they are sharded across processes (DeepSpeed ZeRO-3, FSDP: see
        `distributed.full_state_dict`; LoRA is refused under ZeRO-3 before training).
        """
        merge_adapter(self)
        with atomic_path(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            self.tokenizer.save_pretrained(tmp)
            (tmp / FORMAT_FILE).write_text(json.dumps({"prompt_template": self.prompt_template}))


#: Openings of common chat templates (after an optional BOS token): a prompt starting with one was
#: formatted already. ChatML (Qwen, many others), Llama 3, Llama 2 / Mistral, Gemma, Zephyr / Phi-3.
TEMPLATE_OPENINGS: tuple[str, ...] = (
    "<|im_start|>", "<|begin_of_text|>", "<|start_header_id|>", "[INST]", "<s>[INST]", "<s> [INST]",
    "<start_of_turn>", "<bos><start_of_turn>", "<|system|>", "<|user|>",
)


def _apply_chat_template(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> str:
    """The chat template applied with the generation prompt; a template that refuses a system turn
    gets the system prompt folded into the first user turn (what such models' cards advise)."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        if not (len(messages) > 1 and messages[0].get("role") == "system" and messages[1].get("role") == "user"):
            raise
    first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return tokenizer.apply_chat_template([first, *messages[2:]], tokenize=False, add_generation_prompt=True)


def is_peft_model(model) -> bool:
    """True for a PEFT-wrapped model; never imports peft (a model cannot be one unless peft is loaded)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merge_adapter(policy: Policy) -> Policy:
    """Merge a LoRA adapter into the base weights in place (PEFT's `merge_and_unload`), in float32;
    no-op without an adapter.

    Why float32: PEFT adds the (float32) update to the base weight in the base weight's dtype, so
    on a bfloat16 base every element whose update is below half a unit in the last place of that
    weight (bfloat16 keeps 8 significant bits: half a unit is 0.2-0.4% of the weight) is rounded
    away, which is most of a LoRA update at the learning rates LoRA-DPO uses. Casting the sum
    back to bfloat16 would round it the same way, so no half-precision result keeps the update.
    The merged model is therefore float32 (the base upcast, then merged: exact; twice a bfloat16
    model's memory while it lives), and `Policy.save` writes float32 weights. Whoever computes in
    half precision casts when loading (`load_policy(dtype=...)`, vLLM's `dtype`), which rounds
    only that working copy, never the checkpoint. A float32 base merges exactly as before.
    """
    if is_peft_model(policy.model):
        policy.model = policy.model.to(torch.float32).merge_and_unload()
    return policy


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_policy(path: str | Path, *, tokenizer: str | None = None, dtype: str = "float32",
                trust_remote_code: bool = False, prompt_template: str | None = None) -> Policy:
    """Load weights from safetensors only (no pickle) and the saved prompt format if any."""
    path_str = str(path)
    local = Path(path_str)
    if local.exists() and not (local / "config.json").is_file():
        raise PolicyError(f"{local}: not a model directory (no config.json)")
    if not local.exists() and not is_hub_name(path_str, legacy=True):
        raise PolicyError(f"{path_str}: no such model directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path_str, dtype=DTYPES.get(dtype, "auto"), use_safetensors=True, trust_remote_code=trust_remote_code)
        tok = AutoTokenizer.from_pretrained(tokenizer or path_str, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolicyError(f"{path_str}: cannot load model or tokenizer ({first})") from None
    fmt = local / FORMAT_FILE
    if prompt_template is None and fmt.is_file():
        prompt_template = json.loads(fmt.read_text()).get("prompt_template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.to(device())
    return Policy(model=model, tokenizer=tok, prompt_template=prompt_template, trust_remote_code=trust_remote_code)


def load_configured_policy(cfg, path: str | Path, *, initial: bool) -> Policy:
    """Load a run's policy with the `policy:` section `cfg` (a `config.PolicyConfig`).

    The tokenizer and prompt-template overrides belong to the initial checkpoint; every later
    checkpoint was saved with its own tokenizer and format, so they are not applied again.
    """
    return load_policy(path, tokenizer=cfg.tokenizer if initial else None, dtype=cfg.dtype,
                       trust_remote_code=cfg.trust_remote_code,
                       prompt_template=cfg.prompt_template if initial else None)

"""A policy = a causal LM + its tokenizer + the prompt format both generation and training use.

Keeping the format in one object is what makes on-policy samples and TRL training see the same
text: a chat template when the tokenizer has one, a plain template otherwise.

Every saved policy is a plain safetensors causal LM (a LoRA adapter is merged before saving), so
the initial checkpoint, every iteration's `model/` and any hub model load through one path.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from stagealign.artifacts import atomic_path
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

    @property
    def uses_chat_template(self) -> bool:
        return self.prompt_template is None and bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, prompt: str) -> str:
        """The exact text the model is conditioned on."""
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return (self.prompt_template or "{prompt}\n").format(prompt=prompt)

    @property
    def has_adapter(self) -> bool:
        """True while `model` is a PEFT model (a LoRA adapter not merged yet)."""
        return is_peft_model(self.model)

    def save(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Atomic save: safetensors weights, tokenizer and the prompt format.

        A LoRA adapter still on the model is merged first (`merge_adapter`): a saved policy is
        always a plain causal LM, loadable by `load_policy` and by any tool without PEFT.
        `state_dict` replaces the model's own weights when they are sharded across processes
        (DeepSpeed ZeRO-3, FSDP: see `distributed.full_state_dict`).
        """
        merge_adapter(self)
        with atomic_path(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            self.tokenizer.save_pretrained(tmp)
            (tmp / FORMAT_FILE).write_text(json.dumps({"prompt_template": self.prompt_template}))


def is_peft_model(model) -> bool:
    """True for a PEFT-wrapped model; never imports peft (a model cannot be one unless peft is loaded)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merge_adapter(policy: Policy) -> Policy:
    """Merge a LoRA adapter into the base weights in place (`merge_and_unload`); no-op without one.

    The merged model keeps the base weights' dtype (PEFT adds the float32 update and rounds the
    sum once).
    """
    if is_peft_model(policy.model):
        policy.model = policy.model.merge_and_unload()
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

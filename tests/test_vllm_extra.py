"""The vLLM extra: `pip install 'stagealign[vllm]'` resolves with the package's own bounds, and the
engine sleeps while the HF model has the GPU.

vLLM needs a CUDA GPU and is not installed here. Its install requirements are recorded below from
its release metadata; its engine is replaced by a recorder of the documented calls the backend
makes (`LLM(..., enable_sleep_mode=True)`, `llm.sleep(level=1)`, `llm.wake_up()`, `llm.generate`).
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import tiny_hf
from stagealign.generation import vllm as backend
from stagealign.policy import load_policy

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]

#: the newest vLLM release when the extra was last checked; the extra allows it and nothing newer
VLLM_RELEASE = "0.33.0"
#: Requires-Dist of vllm 0.33.0 (PyPI wheel vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl,
#: vllm-0.33.0.dist-info/METADATA); `pip install --dry-run '.[vllm]'` resolved it to transformers
#: 5.20.2, torch 2.14.0, trl 1.16.0
VLLM_TRANSFORMERS = SpecifierSet(">=5.16.1,<5.21.0")
VLLM_TORCH = "2.14.0"
#: training/preference.py imports trl.data_utils.common_prefix_length, first in TRL 1.15.0
TRL_FIRST_WITH_COMMON_PREFIX = Version("1.15.0")


def _requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["vllm"]]
    return {r.name: r.specifier for r in reqs}


def _overlap(a: SpecifierSet, b: SpecifierSet) -> bool:
    """Some version satisfies both ranges (a non-empty intersection of ranges with inclusive lower
    bounds contains one of their bounds)."""
    return any(v in a and v in b for v in sorted({Version(s.version) for s in (*a, *b)}))


def test_the_vllm_extra_resolves_with_the_package_bounds():
    req = _requirements()
    assert Version(VLLM_RELEASE) in req["vllm"]
    assert Version("0.34.0") not in req["vllm"]  # an unchecked release could pin what we exclude
    assert _overlap(req["transformers"], VLLM_TRANSFORMERS), (req["transformers"], VLLM_TRANSFORMERS)
    assert Version(VLLM_TORCH) in req["torch"]


def test_the_makefile_torch_pin_is_in_the_package_range():
    pin = re.search(r"torch==([0-9][0-9.]*)", (ROOT / "Makefile").read_text()).group(1)
    assert Version(pin) in _requirements()["torch"], pin


def test_the_lowest_versions_allowed_have_what_the_code_uses():
    req = _requirements()
    assert TRL_FIRST_WITH_COMMON_PREFIX in req["trl"]
    assert not any(Version(v) in req["trl"] for v in ("1.0.0", "1.14.2"))
    assert Version("4.56.1") not in req["transformers"]  # from_pretrained(dtype=) and TRL 1.15's floor: 4.56.2


# ------------------------------------------------------------------ the engine's lifecycle
class _Engine:
    """Stands in for `vllm.LLM`: records the calls, returns `n` answers per request."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple] = []

    def sleep(self, level: int = 1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))
        return True

    def generate(self, requests, sampling_params=None, use_tqdm=True):
        self.calls.append(("generate", len(requests)))
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" a{j}", token_ids=(7, j)) for j in range(p.n)])
                for p in sampling_params]


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A `vllm` module whose engines are `_Engine`s, and the backend's GPU check passed."""
    engines: list[_Engine] = []
    module = types.ModuleType("vllm")
    module.LLM = lambda **kw: engines.append(_Engine(**kw)) or engines[-1]
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(backend, "check", lambda: None)  # policies stay on the CPU: no GPU is faked
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (80, 100))
    monkeypatch.setattr(backend, "_engine", None)
    monkeypatch.setattr(backend, "_asleep", False, raising=False)
    return engines


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return tiny_hf.save_policy_dir(tmp_path_factory.mktemp("init"))


def test_suspend_and_resume_are_no_ops_without_an_engine(monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(backend, "_engine", None)
    backend.suspend()
    backend.resume()
    assert "vllm" not in sys.modules  # nothing imported vLLM


def test_the_engine_sleeps_for_training_and_wakes_to_sample(start, fake_vllm):
    policy = load_policy(start, dtype="bfloat16")
    prompts = [tiny_hf.prompt_text(i) for i in range(3)]
    assert backend.generate(policy, prompts, n=2).texts == [[f"a{j}" for j in range(2)]] * 3
    (engine,) = fake_vllm
    assert engine.kwargs["dtype"] == "bfloat16" and engine.kwargs["enable_sleep_mode"] is True
    backend.suspend()  # before training / KL
    backend.suspend()
    assert engine.calls == [("generate", 3), ("sleep", 1)]
    backend.generate(policy, prompts, n=1)
    assert engine.calls[2:] == [("wake_up", None), ("generate", 3)]
    backend.resume()  # awake already
    assert len(fake_vllm) == 1 and len(engine.calls) == 4  # one engine, woken rather than rebuilt


def test_a_lora_policy_is_sampled_merged_in_its_own_dtype(start, fake_vllm, tmp_path, monkeypatch):
    import tempfile

    from peft import LoraConfig, get_peft_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the merged checkpoint is written
    policy = load_policy(start, dtype="bfloat16")
    policy.model = get_peft_model(policy.model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    backend.generate(policy, ["w1 w2"], n=1)
    (engine,) = fake_vllm
    folder = Path(engine.kwargs["model"])
    assert (folder / "model.safetensors").is_file() and str(policy.model.name_or_path) == str(folder)
    # the merged checkpoint keeps the update in float32; the engine samples in the policy's bfloat16
    assert load_policy(folder, dtype="auto").model.dtype == torch.float32
    assert engine.kwargs["dtype"] == "bfloat16"
    assert not policy.has_adapter and policy.model.dtype == torch.bfloat16

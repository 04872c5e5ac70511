"""Reward models as they come: multi-output heads (`head: k`) and custom outputs (`output: score`).

ArmoRM (RLHFlow/ArmoRM-Llama3-8B-v0.1) has 19 regression heads and a gating network; its own
model class returns an output object whose `score` field is the preference score. The tiny models
here stand for both kinds, built from configs (no network): a `LlamaForSequenceClassification`
with three logits, and a gated model class registered with the Auto classes the way a hub
checkpoint's code would be (ArmoRM's needs `trust_remote_code: true`, the user's choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from transformers import (AutoConfig, AutoModelForSequenceClassification, LlamaConfig,  # noqa: E402
                          LlamaForSequenceClassification, LlamaModel, LlamaPreTrainedModel)
from transformers.utils import ModelOutput  # noqa: E402

import tiny_hf  # noqa: E402
from stagealign.judges.registry import build_judge  # noqa: E402
from stagealign.judges.reward_model import RewardModelJudge  # noqa: E402

PROMPTS = [tiny_hf.prompt_text(i) for i in range(5)]
ANSWERS = ["w1", "w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11", "w12 w13 w14 w15 w16 w17 w18"]  # different lengths


class GatedConfig(LlamaConfig):
    model_type = "stagealign-test-gated-rm"


@dataclass
class GatedOutput(ModelOutput):
    rewards: torch.FloatTensor | None = None  # one per objective
    score: torch.FloatTensor | None = None  # the gated mixture: the preference score
    logits: torch.FloatTensor | None = None


class GatedRewardModel(LlamaPreTrainedModel):
    """ArmoRM's shape in miniature: objectives mixed by a gate, pooled at the token before the first
    pad (its rule), the score a field of its own output class."""

    config_class = GatedConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.gating = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.pad_token_id is None:
            last = torch.full((input_ids.shape[0],), -1)
        else:
            last = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        pooled = hidden[torch.arange(input_ids.shape[0]), last]
        rewards = self.regression_layer(pooled)
        score = (torch.softmax(self.gating(pooled), -1) * rewards).sum(-1)
        return GatedOutput(rewards=rewards, score=score, logits=score)


AutoConfig.register(GatedConfig.model_type, GatedConfig, exist_ok=True)
AutoModelForSequenceClassification.register(GatedConfig, GatedRewardModel, exist_ok=True)


def _config(cls, tok, num_labels: int):
    return cls(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=128, num_labels=num_labels,
               pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _save(path, model_cls, config_cls) -> str:
    tok = tiny_hf.build_tokenizer()
    torch.manual_seed(0)
    model = model_cls(_config(config_cls, tok, num_labels=3))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def three_heads(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("three_heads"), LlamaForSequenceClassification, LlamaConfig)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("gated"), GatedRewardModel, GatedConfig)


def _alone(judge: RewardModelJudge, read) -> np.ndarray:
    """Each answer scored by the model itself, one unpadded row at a time."""
    with torch.inference_mode():
        return np.array([float(read(judge.model(input_ids=torch.tensor([judge.encode(p, a)]))))
                         for p, a in zip(PROMPTS, ANSWERS)])


def test_head_names_the_column_of_a_multi_output_head(three_heads):
    judge = build_judge({"kind": "reward_model", "path": three_heads, "head": 1, "batch_size": 3, "device": "cpu"})
    scores = judge.score(PROMPTS, ANSWERS)
    np.testing.assert_allclose(scores, _alone(judge, lambda out: out.logits[0, 1]), atol=1e-5)
    assert np.ptp(scores) > 0
    other = RewardModelJudge(three_heads, head=2, device="cpu").score(PROMPTS, ANSWERS)
    assert not np.allclose(other, scores)  # a different head is a different score


def test_output_names_the_score_field_of_a_custom_head(gated):
    judge = build_judge({"kind": "reward_model", "path": gated, "output": "score", "batch_size": 2, "device": "cpu"})
    assert type(judge.model).__name__ == "GatedRewardModel"
    scores = judge.score(PROMPTS, ANSWERS)
    np.testing.assert_allclose(scores, _alone(judge, lambda out: out.score[0]), atol=1e-5)
    assert np.ptp(scores) > 0
    first = RewardModelJudge(gated, output="rewards", head=0, device="cpu").score(PROMPTS, ANSWERS)
    np.testing.assert_allclose(first, _alone(judge, lambda out: out.rewards[0, 0]), atol=1e-5)


def test_several_outputs_without_a_choice_or_a_bad_choice_is_one_line(three_heads, gated):
    for path in (three_heads, gated):  # num_labels=3 and nothing says which output is the score
        with pytest.raises(ValueError, match=r"num_labels=3: name the score with the judge option `head: <column>`"):
            RewardModelJudge(path, device="cpu")
    with pytest.raises(ValueError, match=r"head: 3 is out of range: .* has num_labels=3 \(heads 0..2\)"):
        RewardModelJudge(three_heads, head=3, device="cpu")
    with pytest.raises(ValueError, match="head must be a column index"):
        RewardModelJudge(three_heads, head=-1, device="cpu")
    with pytest.raises(ValueError) as exc:
        RewardModelJudge(gated, output="reward", device="cpu").score(PROMPTS[:1], ANSWERS[:1])
    assert str(exc.value).endswith("has no output field 'reward' (judge option output); its output has: "
                                   "rewards, score, logits")
    with pytest.raises(ValueError, match="choose the score's column with the judge option head"):
        RewardModelJudge(gated, output="rewards", device="cpu").score(PROMPTS[:1], ANSWERS[:1])

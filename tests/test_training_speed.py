"""The batched tokenisation of preference rows (`training.preference.tokenize_pairs`) gives exactly
what TRL's own per-row `_prepare_dataset` gives, and steps aside where it does not apply."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from datasets import Dataset, load_from_disk
from trl import DPOConfig
from trl import DPOTrainer as TRLDPOTrainer

import tiny_hf
from stagealign.training.preference import DPOTrainer, tokenize_pairs

COLS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _trl(dataset, tok, tmp_path, **kw):
    args = DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to="none", **kw)
    out = TRLDPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), dataset, tok, args, "train")
    return {c: out[c] for c in COLS}


def _ours(dataset, tok, **kw):
    out = tokenize_pairs(dataset, tok, max_length=kw.get("max_length", 1024),
                         truncation_mode=kw.get("truncation_mode", "keep_start"))
    assert out is not None
    return {c: out[c] for c in COLS}


def _bpe_tokenizer():
    """A byte-level BPE whose merges cross the prompt/answer boundary ('t1 m1 m' + 'm2 ...')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["t1 m1 m2 => w1 w2 w3", "hello world, hello there", "w1w2w3 m1m2 worldwide"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


ROWS = [
    {"prompt": "t1 m1 m2 =>", "chosen": " w1 w2", "rejected": " w3"},
    {"prompt": "t2 m3 m4 =>", "chosen": " w5</s>", "rejected": " w6 w7 w8"},  # already ends with EOS
    {"prompt": "t3 m5 m6 =>", "chosen": "", "rejected": " w9"},  # empty answer
    {"prompt": "t4 m1 m2 m3 m4 m5 m6 m7 m8 =>", "chosen": " w1", "rejected": " w2"},  # long prompt
]


@pytest.mark.parametrize("kind", ["word", "bpe"])
@pytest.mark.parametrize("max_length", [1024, 6, None])
def test_batched_tokenisation_matches_trl(kind, max_length, tmp_path):
    tok = tiny_hf.build_tokenizer() if kind == "word" else _bpe_tokenizer()
    rows = ROWS if kind == "word" else ROWS + [{"prompt": "hello wor", "chosen": "ld, hello", "rejected": "ldwide"},
                                                {"prompt": "t1 m1 m", "chosen": "2 => w1", "rejected": "1m2"}]
    ds = Dataset.from_list(rows)
    assert _ours(ds, tok, max_length=max_length) == _trl(ds, tok, tmp_path, max_length=max_length)


def test_keep_end_keeps_every_row(tmp_path):
    tok = tiny_hf.build_tokenizer()
    ds = Dataset.from_list(ROWS)
    ours = _ours(ds, tok, max_length=4, truncation_mode="keep_end")
    assert ours == _trl(ds, tok, tmp_path, max_length=4, truncation_mode="keep_end")
    assert len(ours["prompt_ids"]) == len(ROWS)


def test_steps_aside_for_chat_rows_disk_datasets_and_extra_columns(tmp_path):
    tok = tiny_hf.build_tokenizer(tiny_hf.CHAT_TEMPLATE)
    chat = Dataset.from_list([{"prompt": [{"role": "user", "content": "w1"}],
                               "chosen": [{"role": "assistant", "content": "w2"}],
                               "rejected": [{"role": "assistant", "content": "w3"}]}])
    assert tokenize_pairs(chat, tok, max_length=None) is None
    plain = Dataset.from_list(ROWS)
    plain.save_to_disk(str(tmp_path / "ds"))
    assert tokenize_pairs(load_from_disk(str(tmp_path / "ds")), tok, max_length=None) is None
    assert tokenize_pairs(plain.add_column("score", [1.0] * len(ROWS)), tok, max_length=None) is None
    assert tokenize_pairs(Dataset.from_list([]), tok, max_length=None) is None


def test_trainer_uses_batched_path_and_trains(tmp_path):
    tok = tiny_hf.build_tokenizer()
    model = tiny_hf.build_model(tok)
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_steps=1,
                     per_device_train_batch_size=2, precompute_ref_log_probs=True, save_strategy="no",
                     activation_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(ROWS))
    assert sorted(trainer.train_dataset.column_names) == sorted(COLS + ("ref_chosen_logps", "ref_rejected_logps"))
    assert trainer.train().global_step == 1


def test_cpu_bf16_autocast_only_for_large_models_on_native_bf16_cpus(monkeypatch):
    import stagealign.training.preference as pref

    model = tiny_hf.build_model(tiny_hf.build_tokenizer())
    monkeypatch.delenv("STAGEALIGN_CPU_BF16", raising=False)
    assert pref.cpu_bf16_autocast(model) is False  # tiny: float32 is faster
    monkeypatch.setattr(pref, "CPU_BF16_MIN_PARAMS", 0)
    assert pref.cpu_bf16_autocast(model) is pref.cpu_native_bf16()
    monkeypatch.setattr(pref, "cpu_native_bf16", lambda: False)
    assert pref.cpu_bf16_autocast(model) is False  # no native bf16: never
    monkeypatch.setattr(pref, "cpu_native_bf16", lambda: True)
    monkeypatch.setenv("STAGEALIGN_CPU_BF16", "0")
    assert pref.cpu_bf16_autocast(model) is False
    monkeypatch.setattr(pref, "CPU_BF16_MIN_PARAMS", 10**12)
    monkeypatch.setenv("STAGEALIGN_CPU_BF16", "1")
    assert pref.cpu_bf16_autocast(model) is True


def test_training_under_cpu_bf16_autocast_runs_and_is_recorded(monkeypatch, tmp_path):
    import torch

    import stagealign.training.preference as pref
    from stagealign.config import TrainingConfig
    from stagealign.policy import Policy

    if torch.cuda.is_available() or not pref.cpu_native_bf16():
        pytest.skip("needs a CPU with native bfloat16 and no CUDA")
    monkeypatch.setenv("STAGEALIGN_CPU_BF16", "1")
    tok = tiny_hf.build_tokenizer()
    policy = Policy(model=tiny_hf.build_model(tok), tokenizer=tok, prompt_template="{prompt} =>")
    rows = [{"prompt": "w1 w2", "chosen": "w3 w4", "rejected": "w20"}] * 8
    res = pref.train_preference(policy, rows, TrainingConfig(batch_size=4), seed=0, work_dir=tmp_path)
    assert res.metrics["bf16"] is True and res.steps == 2
    assert next(policy.model.parameters()).dtype == torch.float32  # autocast: weights stay float32

"""The world's word-level tokenizer, as a real `PreTrainedTokenizerFast`.

Built from the world's vocabulary so the testbed runs the same tokenisation code path as a hub
model (padding, special tokens, TRL's prompt/completion split) with no download.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from stagealign.testbed.world import SPECIAL_TOKENS, World


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(world.vocab)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        padding_side="left",
        model_max_length=64,
    )
    return fast

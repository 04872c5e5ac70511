"""Judges for real models, on tiny models built from configs (no network, no downloads)."""

from __future__ import annotations

import io
import json
import os
import sys
import types
import urllib.error

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stagealign.judges.base import CallableJudge, Judge, JudgeError  # noqa: E402
from stagealign.judges.llm_api import HTTPStatusError, OpenAIJudge, parse_verdict  # noqa: E402
from stagealign.judges.pairrm import (  # noqa: E402
    CAND1_PREFIX,
    CAND2_PREFIX,
    CAND_PREFIX,
    SOURCE_PREFIX,
    DebertaV2PairRM,
    PairRMJudge,
    best_worst_tournament,
    comparison_matrix,
    rank_best_worst,
)
from stagealign import plugins  # noqa: E402
from stagealign.judges.registry import JudgeKind, build_judge, kinds  # noqa: E402
from stagealign.judges.reward_model import RewardModelJudge  # noqa: E402

WORDS = ("hello how are you fine thanks bye good bad the a is what time it sun moon red blue "
         "green cat dog tell me story joke short long answer question please why because").split()
PROMPTS = ["tell me a joke", "what time is it", "why is the sun red", "hello"]
ANSWERS = ["a cat", "it is good", "because the moon is blue and the sun is red", "bye"]


# ------------------------------------------------------------------------------ tiny models
def _rm_tokenizer(chat_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    if chat_template:
        fast.chat_template = ("<s>{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
                              "{% endfor %}</s>")
    return fast


def _save_reward_model(path, chat_template: bool = True, num_labels: int = 1) -> str:
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    tok = _rm_tokenizer(chat_template)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      num_labels=num_labels, pad_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def _pairrm_tokenizer():
    from transformers import DebertaV2Tokenizer

    vocab = [(t, 0.0) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]]
    vocab += [("\u2581" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581"]
    tok = DebertaV2Tokenizer(vocab=vocab)
    tok.add_tokens([SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX])
    return tok


def _tiny_pairrm():
    from transformers import DebertaV2Config

    tok = _pairrm_tokenizer()
    ids = tok.convert_tokens_to_ids([SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX])
    cfg = DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
        pad_token_id=0, initializer_range=0.5, n_tasks=1, drop_out=0.05,
        source_prefix_id=ids[0], cand1_prefix_id=ids[1], cand2_prefix_id=ids[2], cand_prefix_id=ids[3])
    torch.manual_seed(0)
    model = DebertaV2PairRM(cfg).eval()
    with torch.no_grad():  # make the head non-trivial so the judge's outputs spread out
        for p in model.head_layer.parameters():
            p.normal_(0.0, 0.5)
    return model, tok


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return _save_reward_model(tmp_path_factory.mktemp("rm"), chat_template=True)


@pytest.fixture(scope="module")
def pairrm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairrm")
    model, tok = _tiny_pairrm()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def pairrm_judge(pairrm_dir):
    return PairRMJudge(pairrm_dir, batch_size=3, max_length=64, device="cpu", source_max_length=24)


# ------------------------------------------------------------------------------ reward model
def test_reward_model_batched_equals_unbatched(rm_dir):
    batched = RewardModelJudge(rm_dir, batch_size=3, device="cpu")
    single = RewardModelJudge(rm_dir, batch_size=1, device="cpu")
    assert batched.use_chat_template
    s_b = batched.score(PROMPTS, ANSWERS)
    s_1 = single.score(PROMPTS, ANSWERS)
    one_by_one = np.array([single.score([p], [a])[0] for p, a in zip(PROMPTS, ANSWERS)])
    assert s_b.shape == (4,) and np.isfinite(s_b).all()
    np.testing.assert_allclose(s_b, s_1, atol=1e-5)
    np.testing.assert_allclose(s_b, one_by_one, atol=1e-5)
    assert np.ptp(s_b) > 0  # different inputs, different scores (order really is restored)
    rev = batched.score(PROMPTS[::-1], ANSWERS[::-1])
    np.testing.assert_allclose(rev[::-1], s_b, atol=1e-5)
    p = batched.prob(PROMPTS, ANSWERS, ANSWERS[::-1])
    assert ((p >= 0) & (p <= 1)).all()


def test_reward_model_without_a_pad_token_reads_the_score_at_the_final_eos(rm_dir):
    # neither the tokenizer nor the config defines a pad token, and the template ends in EOS: the
    # score is the model's at the last token (EOS), as when each row is scored alone, unpadded
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()  # pad_token_id None: reads [-1]
    assert plain.config.pad_token_id is None and AutoTokenizer.from_pretrained(rm_dir).pad_token is None
    judge = RewardModelJudge(rm_dir, batch_size=4, device="cpu")
    assert judge.encode(PROMPTS[0], ANSWERS[0])[-1] == judge.tokenizer.eos_token_id
    with torch.inference_mode():
        alone = [float(plain(input_ids=torch.tensor([judge.encode(p, a)])).logits[0, 0])
                 for p, a in zip(PROMPTS, ANSWERS)]
    lengths = {len(judge.encode(p, a)) for p, a in zip(PROMPTS, ANSWERS)}
    assert len(lengths) > 2  # one padded batch of different lengths
    np.testing.assert_allclose(judge.score(PROMPTS, ANSWERS), alone, atol=1e-5)
    np.testing.assert_allclose([judge.score([p], [a])[0] for p, a in zip(PROMPTS, ANSWERS)], alone, atol=1e-5)


def test_reward_model_uses_own_chat_template_or_plain_text(rm_dir, tmp_path):
    judge = RewardModelJudge(rm_dir, device="cpu")
    ids = judge.encode("tell me a joke", "a cat")
    assert judge.tokenizer.convert_ids_to_tokens(ids) == [
        "<s>", "<|user|>", "tell", "me", "a", "joke", "<|assistant|>", "a", "cat", "</s>"]
    plain = RewardModelJudge(_save_reward_model(tmp_path / "plain", chat_template=False), device="cpu")
    assert not plain.use_chat_template
    assert plain.tokenizer.convert_ids_to_tokens(plain.encode("tell me", "a cat")) == ["tell", "me", "a", "cat"]
    assert np.isfinite(plain.score(["tell me"], ["a cat"])).all()


def test_reward_model_truncates_prompt_from_the_left(rm_dir):
    judge = RewardModelJudge(rm_dir, device="cpu", max_length=12, batch_size=2)
    long_prompt = " ".join(["why"] * 50 + ["tell", "me"])
    ids = judge.encode(long_prompt, "a short answer")
    toks = judge.tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 12
    assert toks[:2] == ["<s>", "<|user|>"] and toks[-1] == "</s>"
    assert toks[-5:-1] == ["<|assistant|>", "a", "short", "answer"]  # the answer is intact
    assert toks[-7:-5] == ["tell", "me"]  # the end of the prompt survives, its start is cut
    long_answer = " ".join(["good"] * 40)
    ids2 = judge.encode("hello", long_answer)  # answer alone too long: its end is cut too
    toks2 = judge.tokenizer.convert_ids_to_tokens(ids2)
    # the prompt goes first (here entirely), then the end of the answer
    assert len(ids2) == 12 and toks2[:4] == ["<s>", "<|user|>", "<|assistant|>", "good"]
    assert toks2[-1] == "</s>"
    scores = judge.score([long_prompt, "hello", "hi"], ["a short answer", long_answer, "bye"])
    assert np.isfinite(scores).all()


def test_reward_model_bad_paths(tmp_path, rm_dir):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="nope"):
        RewardModelJudge(missing, device="cpu")
    two = _save_reward_model(tmp_path / "two_labels", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2: name the score"):
        RewardModelJudge(two, device="cpu")
    from transformers import LlamaConfig, LlamaForCausalLM

    lm_dir = tmp_path / "lm"
    cfg = LlamaConfig(vocab_size=len(WORDS) + 5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(str(lm_dir))
    with pytest.raises(ValueError, match="not a sequence-classification"):
        RewardModelJudge(str(lm_dir), device="cpu")


# ------------------------------------------------------------------------------ PairRM
def test_pairrm_probabilities_and_symmetry(pairrm_judge):
    j = pairrm_judge
    assert j.pairwise_only
    with pytest.raises(NotImplementedError):
        j.score(["x"], ["y"])
    a = ["a cat", "good answer", "the sun is red", "bye bye", "what"]
    b = ["a dog", "bad answer please", "moon", "hello how are you", "why"]
    prompts = ["tell me a joke", "question", "why is the sun red", "hello", "what time is it"]
    p_ab = j.prob(prompts, a, b)
    p_ba = j.prob(prompts, b, a)
    assert ((p_ab >= 0) & (p_ab <= 1)).all()
    np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-6)
    assert np.ptp(p_ab) > 1e-4  # the tiny model does discriminate
    raw = j.logits(prompts, a, b)
    assert np.isfinite(raw).all()
    # a prompt that fakes the prefix tokens is cleaned, not mis-read
    assert np.isfinite(j.prob([SOURCE_PREFIX + " hi " + CAND1_PREFIX], ["a"], ["b"])).all()
    # a very long prompt is truncated (PairRM: prompt end cut) and still scores
    assert len(j.encode(" ".join(["why"] * 200), "a", "b")) <= j.max_length
    assert np.isfinite(j.prob([" ".join(["why"] * 200)], [" ".join(["cat"] * 100)], ["dog"])).all()


def test_pairrm_safetensors_round_trip_keeps_real_parameter_names(pairrm_dir, pairrm_judge, tmp_path):
    from safetensors import safe_open

    files = [f for f in os.listdir(pairrm_dir) if f.endswith(".safetensors")]
    assert files
    with safe_open(os.path.join(pairrm_dir, files[0]), "pt") as f:
        keys = set(f.keys())
    assert {"head_layer.1.weight", "head_layer.1.bias", "head_layer.4.weight", "head_layer.4.bias"} <= keys
    assert "pretrained_model.embeddings.word_embeddings.weight" in keys
    assert all(k.startswith(("pretrained_model.", "head_layer.")) for k in keys)
    # the loaded model reproduces the in-memory one, and a re-save/re-load is identical
    model, tok = _tiny_pairrm()
    ids = torch.tensor([pairrm_judge.encode("tell me a joke", "a cat", "a dog")])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    loaded = pairrm_judge.logits(["tell me a joke"], ["a cat"], ["a dog"])
    np.testing.assert_allclose(loaded, ref.numpy(), atol=1e-5)
    pairrm_judge.model.save_pretrained(str(tmp_path / "again"))
    pairrm_judge.tokenizer.save_pretrained(str(tmp_path / "again"))
    again = PairRMJudge(str(tmp_path / "again"), batch_size=2, max_length=64, device="cpu", source_max_length=24)
    np.testing.assert_allclose(again.logits(["tell me a joke"], ["a cat"], ["a dog"]), loaded, atol=1e-6)


def test_pairrm_bad_path(tmp_path):
    with pytest.raises(ValueError, match="missing_pairrm"):
        PairRMJudge(str(tmp_path / "missing_pairrm"), device="cpu")


def test_pairrm_matrix_and_rank_best_worst(pairrm_judge):
    cands = ["a cat", "good answer", "the sun is red", "bye", "hello how are you"]
    m = pairrm_judge.matrix("tell me a joke", cands)
    assert m.shape == (5, 5)
    np.testing.assert_allclose(m + m.T, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(m), 0.5)
    best, worst = pairrm_judge.rank_best_worst("tell me a joke", cands)
    assert 0 <= best < 5 and 0 <= worst < 5 and best != worst
    # when the tiny model's preferences happen to be transitive, the tournament is exact
    wins = (m > 0.5).sum(axis=1)
    if sorted(wins.tolist()) == list(range(5)):
        assert best == int(np.argmax(wins)) and worst == int(np.argmin(wins))


class _TransitivePairwise(Judge):
    """Deterministic pairwise-only judge: the hidden quality of answer 'qN' is N."""

    name = "transitive"
    pairwise_only = True

    def __init__(self):
        self.calls = 0
        self.comparisons = 0

    def _prob(self, prompts, a, b):
        self.calls += 1
        self.comparisons += len(a)
        qa = np.array([float(x[1:]) for x in a])
        qb = np.array([float(x[1:]) for x in b])
        return 1.0 / (1.0 + np.exp(-(qa - qb)))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 16, 33])
def test_rank_best_worst_matches_full_matrix_on_transitive_judge(n):
    rng = np.random.default_rng(n)
    quality = rng.permutation(100)[:n]
    cands = [f"q{q}" for q in quality]
    judge = _TransitivePairwise()
    m = comparison_matrix(judge, "p", cands)
    full_calls = judge.comparisons
    judge.calls = judge.comparisons = 0
    best, worst = rank_best_worst(judge, "p", cands)
    rows = m.sum(axis=1)
    assert best == int(np.argmax(rows)) == int(np.argmax(quality))
    assert worst == int(np.argmin(rows)) == int(np.argmin(quality))
    assert judge.comparisons <= max(0, (3 * n) // 2 - 1)  # O(N): ~3N/2 - 2
    assert full_calls == n * (n - 1) // 2
    if n > 1:
        assert judge.calls <= int(np.ceil(np.log2(n))) + 1  # batched rounds


def test_tournament_edge_cases():
    with pytest.raises(ValueError):
        best_worst_tournament(lambda pairs: np.ones(len(pairs)), 0)
    assert best_worst_tournament(lambda pairs: np.ones(len(pairs)), 1) == (0, 0, 0)
    # P >= 0.5 -> the first of the pair wins: with all ties item 0 is best
    best, worst, used = best_worst_tournament(lambda pairs: np.full(len(pairs), 0.5), 6)
    assert best == 0 and worst != 0 and used <= 8


# ------------------------------------------------------------------------------ OpenAI-compatible
SECRET = "sk-test-SECRET-0123456789abcdef"


def _reply(text):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def _fake_transport(prefer: str, position_bias: str | None = None, log=None):
    """Prefers answers containing `prefer`; with `position_bias` it always answers that letter."""

    def transport(payload):
        if log is not None:
            log.append(payload)
        content = payload["messages"][-1]["content"]
        if position_bias:
            return _reply(position_bias)
        a_part = content.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
        return _reply("A" if prefer in a_part else "B")

    return transport


def test_openai_judge_parsing_and_order_averaging(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    log = []
    judge = OpenAIJudge("gpt-test", transport=_fake_transport("good", log=log), max_workers=2)
    p = judge.prob(["q", "q"], ["a good one", "meh"], ["meh", "a good one"])
    np.testing.assert_allclose(p, [1.0, 0.0])
    assert len(log) == 4  # both orders for each pair
    assert log[0]["model"] == "gpt-test" and log[0]["temperature"] == 0.0
    assert all("Authorization" not in json.dumps(x) and SECRET not in json.dumps(x) for x in log)
    # a judge that always says "A" is fully position-biased: averaging both orders gives a tie
    biased = OpenAIJudge("gpt-test", transport=_fake_transport("good", position_bias="A"))
    np.testing.assert_allclose(biased.prob(["q"], ["x"], ["y"]), [0.5])
    one_order = OpenAIJudge("gpt-test", transport=_fake_transport("good", position_bias="A"), both_orders=False)
    np.testing.assert_allclose(one_order.prob(["q"], ["x"], ["y"]), [1.0])
    with pytest.raises(NotImplementedError):
        judge.score(["q"], ["a"])


@pytest.mark.parametrize("text,verdict", [
    ("A", "A"), (" b ", "B"), ("**B**", "B"), ("[[A]]", "A"), ("(B).", "B"),
    ("A. It is more complete.", "A"), ("The better answer is B.", "B"),
    ("After comparing both, my final verdict: [[B]]", "B"), ("<think>A or B? hmm</think>B", "B"),
    ("A better answer would discuss both", None), ("I cannot decide", None), ("", None),
    # reasoning models: the verdict is the final answer's, never one written while thinking
    ("Answer A looks fuller. Final verdict: [[A]]. But it is wrong.\n</think>\n\nB", "B"),  # block opened by the prompt
    ("<think>Answer A is better. Final verdict: [[A]]", None),  # thinking cut off by the token cap
    ("<think>[[B]]</think>Hmm.<think>The better answer is B</think>\n**A**", "A"),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


class _ReasoningEndpoint:
    """A chat-completions server on 127.0.0.1 answering like a reasoning model: a decoy "[[A]]" in
    its `reasoning_content` and inside <think>, the real verdict "[[B]]" after the thinking."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server hook
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                content = ("<think>Answer A is longer. Final verdict: [[A]]? No: A misreads the question."
                           "</think>\n\nAnswer B is correct. Final verdict: [[B]]")
                message = {"role": "assistant", "content": content, "reasoning_content": "The better answer is A. [[A]]"}
                reply = json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_openai_reasoning_model_over_http_omits_temperature_and_reads_the_final_verdict(monkeypatch, tmp_path):
    # configured as a user would in YAML: judge.options.temperature / max_tokens null, OpenAI's cap
    from stagealign.config import load_config
    from stagealign.judges.registry import spec_from_config

    for var in ("NO_PROXY", "no_proxy"):  # a proxy configured for the machine must not see loopback requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    server = _ReasoningEndpoint()
    try:
        cfg = load_config(None, [
            f"policy.model={tmp_path / 'sft'}", f"data.pool={tmp_path / 'pool.jsonl'}", "judge.kind=openai",
            "judge.path=o3-mini", f"judge.options.base_url={server.url}", "judge.options.api_key_env=null",
            "judge.options.temperature=null", "judge.options.max_tokens=null",
            "judge.options.max_completion_tokens=4096", "judge.options.both_orders=false"])
        judge = build_judge(spec_from_config(cfg.judge))
        np.testing.assert_allclose(judge.prob(["q", "r"], ["x", "y"], ["z", "w"]), [0.0, 0.0])  # B both times
    finally:
        server.close()
    assert len(server.bodies) == 2
    for body in server.bodies:
        assert "temperature" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == 4096 and body["model"] == "o3-mini"
    assert judge.stats() == {"requests": 2, "unparsed": 0, "truncated": 0}


def test_openai_unparseable_replies_are_counted_and_logged_once(monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def cut_off(payload):  # a reasoning model stopped by the token cap mid-thought: its "[[B]]" is no verdict
        assert payload["max_tokens"] == 16 and payload["temperature"] == 0.0  # the defaults are still sent
        return {"choices": [{"finish_reason": "length", "message": {
            "content": "<think>Comparing: B is better, so [[B]] and", "reasoning_content": None}}]}

    judge = OpenAIJudge("m", transport=cut_off, max_workers=1)
    with caplog.at_level("WARNING", logger="stagealign.judges.llm_api"):
        np.testing.assert_allclose(judge.prob(["q", "q"], ["x", "y"], ["y", "x"]), [0.5, 0.5])
    assert judge.stats() == {"requests": 4, "unparsed": 4, "truncated": 4}
    warnings = [r.getMessage() for r in caplog.records if "no verdict" in r.getMessage()]
    assert len(warnings) == 1 and "max_tokens" in warnings[0]
    ok = OpenAIJudge("m", transport=lambda payload: _reply("B"), both_orders=False)
    ok.prob(["q"], ["x"], ["y"])
    assert ok.stats() == {"requests": 1, "unparsed": 0, "truncated": 0}
    # what a run reports: the counts reach through the run's wrappers (the cache), and only for an endpoint
    from stagealign.judges.base import CachedJudge
    from stagealign.judges.llm_api import endpoint_stats

    assert endpoint_stats(CachedJudge(judge)) == {"requests": 4, "unparsed": 4, "truncated": 4}
    assert endpoint_stats(CachedJudge(CallableJudge(_length_scores))) is None
    with pytest.raises(ValueError, match="max_completion_tokens"):
        OpenAIJudge("m", transport=cut_off, max_completion_tokens=0)


def test_openai_unparseable_logprobs_and_template(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tie = OpenAIJudge("m", transport=lambda payload: _reply("no idea"))
    np.testing.assert_allclose(tie.prob(["q"], ["x"], ["y"]), [0.5])
    assert tie.n_unparsed == 2 and tie.n_requests == 2
    strict = OpenAIJudge("m", transport=lambda payload: _reply("no idea"), on_unparseable="error")
    with pytest.raises(JudgeError, match="'A' or 'B'"):
        strict.prob(["q"], ["x"], ["y"])

    def logprob_transport(payload):
        assert payload["logprobs"] is True
        tops = [{"token": "A", "logprob": float(np.log(0.8))}, {"token": "B", "logprob": float(np.log(0.2))}]
        return {"choices": [{"message": {"content": "A"},
                             "logprobs": {"content": [{"token": "A", "logprob": tops[0]["logprob"],
                                                       "top_logprobs": tops}]}}]}

    lp = OpenAIJudge("m", transport=logprob_transport, use_logprobs=True)
    np.testing.assert_allclose(lp.prob(["q"], ["x"], ["y"]), [0.5 * (0.8 + 1 - 0.8)])
    seen = []
    custom = OpenAIJudge("m", transport=_fake_transport("z", log=seen), system_prompt=None,
                         template="[Answer A]\n{a}\n\n[Answer B]\n{b}\n\nQ: {prompt} {not_a_field}")
    custom.prob(["has {a} inside"], ["xz"], ["y"])
    assert len(seen[0]["messages"]) == 1
    assert seen[0]["messages"][0]["content"].endswith("Q: has {a} inside {not_a_field}")
    with pytest.raises(ValueError, match="placeholders"):
        OpenAIJudge("m", transport=lambda p: {}, template="no fields")


def test_openai_errors_never_leak_the_key(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)

    def http_error(payload):
        raise HTTPStatusError(401, f"Incorrect API key provided: {SECRET}. Bearer {SECRET}")

    judge = OpenAIJudge("m", base_url="http://judge.invalid/v1", api_key_env="MY_JUDGE_KEY",
                        transport=http_error, retry_backoff=0.0)
    assert SECRET not in repr(judge) and SECRET not in str(judge)
    assert SECRET not in json.dumps({k: str(v) for k, v in vars(judge).items()})
    with pytest.raises(JudgeError) as err:
        judge.prob(["q"], ["a"], ["b"])
    assert "401" in str(err.value) and SECRET not in str(err.value)
    assert "sk-test" not in str(err.value)

    attempts = []

    def flaky(payload):  # 503 twice, then an answer: retried
        attempts.append(1)
        if len(attempts) <= 2:
            raise HTTPStatusError(503, "overloaded")
        return _reply("A")

    ok = OpenAIJudge("m", api_key_env="MY_JUDGE_KEY", transport=flaky, retry_backoff=0.0,
                     both_orders=False, max_retries=3)
    np.testing.assert_allclose(ok.prob(["q"], ["a"], ["b"]), [1.0])
    assert len(attempts) == 3

    def broken(payload):
        raise RuntimeError(f"socket closed while sending {SECRET}")

    with pytest.raises(JudgeError) as err2:
        OpenAIJudge("m", api_key_env="MY_JUDGE_KEY", transport=broken).prob(["q"], ["a"], ["b"])
    assert SECRET not in str(err2.value) and "RuntimeError" in str(err2.value)
    with pytest.raises(JudgeError, match="error"):
        OpenAIJudge("m", api_key_env="MY_JUDGE_KEY",
                    transport=lambda p: {"error": {"message": "bad model"}}).prob(["q"], ["a"], ["b"])


def test_openai_default_transport_uses_env_key_without_leaking(monkeypatch):
    import stagealign.judges.llm_api as llm_api

    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    seen = {}

    class _Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout=None):
        seen["url"] = request.full_url
        seen["auth"] = request.get_header("Authorization")
        seen["body"] = json.loads(request.data)
        if seen["body"]["messages"][-1]["content"].startswith("[User prompt]\nfail"):
            raise urllib.error.HTTPError(request.full_url, 401, "Unauthorized", {},
                                         io.BytesIO(f'{{"error": "bad key {SECRET}"}}'.encode()))
        return _Resp(json.dumps(_reply("B")).encode())

    monkeypatch.setattr(llm_api.urllib.request, "urlopen", fake_urlopen)
    judge = OpenAIJudge("m", base_url="http://localhost:9/v1/", api_key_env="MY_JUDGE_KEY", both_orders=False)
    np.testing.assert_allclose(judge.prob(["q"], ["a"], ["b"]), [0.0])
    assert seen["url"] == "http://localhost:9/v1/chat/completions"
    assert seen["auth"] == f"Bearer {SECRET}"
    with pytest.raises(JudgeError) as err:
        judge.prob(["fail"], ["a"], ["b"])
    assert "401" in str(err.value) and SECRET not in str(err.value)
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(ValueError, match="MY_JUDGE_KEY"):
        OpenAIJudge("m", api_key_env="MY_JUDGE_KEY")
    OpenAIJudge("m", base_url="http://localhost:8000/v1", api_key_env=None)  # no auth: fine


# ------------------------------------------------------------------------------ registry
def _length_scores(prompts, answers):
    return [float(len(a)) for a in answers]


def test_registry_callable_judge(monkeypatch):
    mod = types.ModuleType("_stagealign_test_judge_mod")
    mod.length_scores = _length_scores
    mod.not_callable = 3
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    judge = build_judge({"kind": "callable", "path": f"{mod.__name__}:length_scores", "name": "len"})
    assert isinstance(judge, CallableJudge) and judge.name == "len"
    np.testing.assert_allclose(judge.score(["p", "p"], ["ab", "abcd"]), [2.0, 4.0])
    assert judge.prob(["p"], ["abcd"], ["ab"])[0] > 0.5
    with pytest.raises(ValueError, match="no attribute"):
        build_judge({"kind": "callable", "path": f"{mod.__name__}:missing"})
    with pytest.raises(ValueError, match="not callable"):
        build_judge({"kind": "callable", "path": f"{mod.__name__}:not_callable"})
    with pytest.raises(ValueError, match="not accepted by the callable judge"):
        build_judge({"kind": "callable", "path": f"{mod.__name__}:length_scores", "bogus": 1})


def test_registry_errors_and_plugin_kinds(rm_dir, pairrm_dir, monkeypatch):
    with pytest.raises(ValueError) as err:
        build_judge({"kind": "magic"})
    for kind in ("reward_model", "pairrm", "openai", "callable"):
        assert kind in str(err.value)
    with pytest.raises(ValueError, match="kind"):
        build_judge({"path": "x"})
    with pytest.raises(ValueError, match="not accepted by the reward_model judge"):
        build_judge({"kind": "reward_model", "path": rm_dir, "batchsize": 3})
    with pytest.raises(ValueError, match="needs judge.path"):
        build_judge({"kind": "reward_model"})

    built = []

    def magic(noise: float = 0.0) -> Judge:
        built.append(noise)
        return CallableJudge(_length_scores, name="magic")

    installed = plugins.judge_kinds

    def plugin_kinds(**found):  # what installed plugins register through `Plugin.judges`
        monkeypatch.setattr(plugins, "judge_kinds", lambda: found)

    plugin_kinds(magic=JudgeKind("magic", magic, pairwise_only=False))
    assert "magic" in kinds()
    assert build_judge({"kind": "magic", "noise": 0.1}).name == "magic"
    assert built == [0.1]
    with pytest.raises(ValueError, match="magic"):
        build_judge({"kind": "nope"})
    plugin_kinds(callable=JudgeKind("callable", magic, pairwise_only=False))
    with pytest.raises(ValueError, match="clash"):
        build_judge({"kind": "callable", "path": "x:y"})
    plugin_kinds(bad=JudgeKind("bad", lambda: object(), pairwise_only=False))
    with pytest.raises(ValueError, match="not a Judge"):
        build_judge({"kind": "bad"})
    monkeypatch.setattr(plugins, "judge_kinds", installed)

    rm = build_judge({"kind": "reward_model", "path": rm_dir, "batch_size": 2, "device": "cpu"})
    assert isinstance(rm, RewardModelJudge) and rm.batch_size == 2
    pr = build_judge({"kind": "pairrm", "path": pairrm_dir, "max_length": 64, "source_max_length": 24,
                      "device": "cpu"})
    assert isinstance(pr, PairRMJudge)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    oa = build_judge({"kind": "openai", "model": "m", "transport": _fake_transport("x")})
    assert isinstance(oa, OpenAIJudge) and SECRET not in repr(oa)

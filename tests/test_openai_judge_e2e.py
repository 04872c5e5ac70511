"""A whole run judged by an LLM behind an OpenAI-compatible endpoint, over real HTTP on 127.0.0.1.

The endpoint is a local `ThreadingHTTPServer` speaking the chat-completions protocol: it reads the
two answers out of the judge's prompt and prefers the one with more words, answering like a
chatty model ("... Final verdict: [[A]]"), and serves a bounded number of requests. The run is
the tiny HF policy and generic pool of `tiny_hf`, `judge.kind=openai` with `base_url` pointing at
the server and no API key; it must finish with the judge's win rate as its metric, computed from
the server's verdicts. No network beyond the loopback interface.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import tiny_hf
from stagealign.config import load_config
from stagealign.judges.llm_api import DEFAULT_SYSTEM_PROMPT
from stagealign.pipeline import Run
from stagealign.rundir import RunDir

MODEL = "local-judge-7b"
LIMIT = 2000  # requests the server answers; then HTTP 400, so a runaway loop fails instead of spinning


def question(content: str) -> tuple[str, str, str]:
    """(user prompt, answer A, answer B) from a request made with the judge's default template."""
    head, rest = content.split("\n\n[Answer A]\n", 1)
    a, rest = rest.split("\n\n[Answer B]\n", 1)
    return head.removeprefix("[User prompt]\n"), a, rest.rsplit("\n\nWhich answer is better?", 1)[0]


def verdict(a: str, b: str) -> str:
    """The server's rule: the answer with more words wins; a tie goes to A (a position bias)."""
    return "B" if len(b.split()) > len(a.split()) else "A"


class JudgeEndpoint(BaseHTTPRequestHandler):
    """POST /v1/chat/completions, as an OpenAI-compatible server answers it."""

    def do_POST(self):  # noqa: N802 - the http.server hook
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.seen.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
            over = len(server.seen) > LIMIT
        if over:
            return self._send(400, {"error": {"message": f"this test server answers {LIMIT} requests"}})
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        _, a, b = question(body["messages"][-1]["content"])
        v = verdict(a, b)
        self._send(200, {"id": f"chatcmpl-{len(server.seen)}", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {
                             "role": "assistant", "content": f"Answer {v} covers more.\n\nFinal verdict: [[{v}]]"}}],
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def endpoint(monkeypatch):
    """The server on a free loopback port, in a background thread, shut down after the test."""
    for var in ("NO_PROXY", "no_proxy"):  # a proxy configured for the machine must not see loopback requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeEndpoint)
    server.daemon_threads = True
    server.lock, server.seen = threading.Lock(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_run_judged_by_an_openai_compatible_endpoint(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-be-sent-0123456789")
    model = tiny_hf.save_policy_dir(tmp_path / "sft", chat_template=tiny_hf.CHAT_TEMPLATE)
    pool = tiny_hf.write_generic_pool(tmp_path / "pool.jsonl", prompts=40)
    base_url = f"http://127.0.0.1:{endpoint.server_address[1]}/v1"
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"policy.model={model}", f"data.pool={pool}", "data.format=generic",
        "judge.kind=openai", f"judge.path={MODEL}", f"judge.options.base_url={base_url}",
        "judge.options.api_key_env=null", "iterations=2", "schedule.kind=path", "schedule.path=off,on",
        "data.train_prompts=8", "data.eval_prompts=4", "eval.samples=2", "generation.n=3",
        "generation.max_new_tokens=6", "boundary.probe_prompts=4", "boundary.min_prompts=4",
        "boundary.batch_prompts=4", "training.batch_size=4", "training.learning_rate=0.05"])
    summary = Run(cfg).execute()

    # the run: two iterations, headline = the endpoint's win rate against the initial policy
    d = RunDir(cfg.run_dir)
    assert d.finished and summary["metric"] == "win_rate_judge"
    stats = summary["judge_endpoint"]  # the run says what the endpoint cost and what it could not read
    assert stats["requests"] > 0 and stats["unparsed"] == 0
    assert [(r["iteration"], r["source"]) for r in summary["iterations"]] == [(1, "static"), (2, "onpolicy")]
    initial = {r["prompt_id"]: r["answers"] for r in d.read_rows(0, "eval_answers.jsonl")}
    for row in summary["iterations"]:
        assert 0.0 <= row["after_lo"] <= row["after"] <= row["after_hi"] <= 1.0
        # the server's verdicts on each answer vs the initial policy's first one, both orders averaged
        wins = [((verdict(x, y) == "A") + (verdict(y, x) == "B")) / 2
                for r in d.read_rows(row["iteration"], "eval_answers.jsonl") for x in r["answers"]
                for y in initial[r["prompt_id"]][:1]]
        assert row["after"] == pytest.approx(sum(wins) / len(wins))
        pairs = list(d.read_rows(row["iteration"], "pairs.jsonl"))
        assert pairs and all(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs)

    # the endpoint: every judge request, well formed, unauthenticated, each pair asked in both orders
    seen = endpoint.seen
    assert 0 < len(seen) <= LIMIT and len(seen) % 2 == 0
    assert {(s["path"], s["authorization"]) for s in seen} == {("/v1/chat/completions", None)}
    bodies = [s["body"] for s in seen]
    assert {(b["model"], b["temperature"], b["messages"][0]["content"]) for b in bodies} == {
        (MODEL, 0.0, DEFAULT_SYSTEM_PROMPT)}
    asked = Counter(question(b["messages"][-1]["content"]) for b in bodies)
    assert all(asked[(p, y, x)] == n for (p, x, y), n in asked.items())
    prompts = {json.loads(line)["prompt"] for line in pool.read_text(encoding="utf-8").splitlines()}
    assert {p for p, _, _ in asked} <= prompts

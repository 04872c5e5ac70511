"""An LLM behind any OpenAI-compatible chat-completions endpoint as a pairwise judge.

The judge asks "which answer is better, A or B?" and parses the letter. Position bias is mitigated
by asking both orders, (a as A, b as B) and (b as A, a as B), and averaging:
``P(a > b) = (P_A(a, b) + 1 - P_A(b, a)) / 2`` where ``P_A`` is 1 for "A", 0 for "B" (or, with
``use_logprobs=True``, the renormalised probability of the first token being "A" vs "B").

Transport: the standard library (`urllib.request`), no extra dependency. The API key is read from
the environment variable `api_key_env` at each request and is never stored on the judge, shown in
its repr, or included in error messages (messages are redacted in case a server echoes it). Tests
and custom clients pass ``transport=fn`` where ``fn(payload: dict) -> response: dict`` receives the
JSON body of a chat-completions request and returns the parsed JSON response; it may raise
`HTTPStatusError` (or `urllib.error.HTTPError`) to report an HTTP failure.

Reasoning models (o1/o3-style, DeepSeek-R1, QwQ, Qwen3 thinking) think before they answer, so
the request and the parsing both adapt:

- ``temperature: null`` / ``max_tokens: null`` leave those fields out of the request (OpenAI's
  reasoning models reject a temperature, and a 16-token cap cuts the thinking off before any
  verdict); ``max_completion_tokens: N`` sends OpenAI's newer cap instead of ``max_tokens``.
- The verdict is read from the final answer only: the message ``content`` after its last
  ``</think>`` (also when the server's chat template opened the block in the prompt), and nothing
  after a ``<think>`` left open (thinking cut off by the token cap). A ``reasoning_content`` /
  ``reasoning`` field is never read, so "[[A]]" written while thinking cannot count as a verdict.

Replies without a readable verdict are never silent: they are counted (`n_unparsed`, of
`n_requests`; `stats()` gives both, with the replies cut off by the token cap) and, with the
default ``on_unparseable="tie"``, scored 0.5; the first one is logged with the start of its text.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from stagealign.judges.base import Judge, JudgeError

Transport = Callable[[dict], dict]

DEFAULT_SYSTEM_PROMPT = (
    "You are an impartial judge. You compare two answers to the same user prompt and decide which "
    "one is better: more helpful, correct, relevant and clear. Do not let the order of the answers "
    "or their length influence you."
)
DEFAULT_TEMPLATE = (
    "[User prompt]\n{prompt}\n\n"
    "[Answer A]\n{a}\n\n"
    "[Answer B]\n{b}\n\n"
    "Which answer is better? Reply with exactly one letter: A or B."
)
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_PLACEHOLDER = re.compile(r"\{(prompt|a|b)\}")
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_VERDICTS = (
    re.compile(r"^[\s\W]*([AB])[\s\W]*$", re.IGNORECASE),  # "A", "**B**", "(A).", "[[B]]", "a"
    re.compile(r"\[\[\s*([AB])\s*\]\]"),  # "... final verdict: [[A]]"
    re.compile(r"^[\s\"'*(\[]*([AB])(?:[.:,)\]*]|\s*\n)"),  # "A. because ..." / "B:\n..."
    re.compile(r"(?i:answer|verdict|choice|winner|better(?:\s+answer)?(?:\s+is)?)\W{0,3}\s*"
               r"(?i:answer\s+)?[\"'*(\[]*([AB])\b"),  # "The better answer is B"
)
_KEYLIKE = (re.compile(r"(?i)(bearer\s+)\S+"), re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"))
_log = logging.getLogger(__name__)


class HTTPStatusError(Exception):
    """Raised by a transport for a non-2xx HTTP answer (status code and response body)."""

    def __init__(self, status: int, body: str = ""):
        super().__init__(f"HTTP {status}: {body}")
        self.status = int(status)
        self.body = body


def final_answer(text: str) -> str:
    """The part of a reply after any thinking: the text after the last ``</think>`` (also when the
    block was opened by the prompt, not the reply), and none after a ``<think>`` left open (thinking
    cut off), so nothing written while thinking can be read as the verdict."""
    text = text or ""
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[:opened.start()]
    return text.strip()


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None from a judge's reply (its final answer, after any thinking)."""
    text = final_answer(text)
    for pattern in _VERDICTS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


class OpenAIJudge(Judge):
    """Pairwise LLM judge over an OpenAI-compatible `/chat/completions` endpoint."""

    pairwise_only = True

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        *,
        transport: Transport | None = None,
        template: str = DEFAULT_TEMPLATE,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        both_orders: bool = True,
        temperature: float | None = 0.0,
        max_tokens: int | None = 16,
        max_completion_tokens: int | None = None,
        use_logprobs: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        max_workers: int = 4,
        on_unparseable: str = "tie",
        name: str | None = None,
    ):
        if on_unparseable not in ("tie", "error"):
            raise ValueError(f"on_unparseable must be 'tie' or 'error', got {on_unparseable!r}")
        missing = {"{prompt}", "{a}", "{b}"} - {m.group(0) for m in _PLACEHOLDER.finditer(template)}
        if missing:
            raise ValueError(f"template lacks the placeholders {sorted(missing)}")
        if max_retries < 0 or max_workers < 1:
            raise ValueError("max_retries must be >= 0 and max_workers >= 1")
        for key, value in (("max_tokens", max_tokens), ("max_completion_tokens", max_completion_tokens)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{key} must be >= 1 or null (left out of the request), got {value!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        if transport is None and api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"environment variable {api_key_env!r} (the API key) is not set; "
                             "pass api_key_env=None for an endpoint without authentication")
        self._transport = transport or self._urllib_transport
        self.template = template
        self.system_prompt = system_prompt
        self.both_orders = bool(both_orders)
        # not `self.temperature`: on a Judge that name is the Bradley-Terry temperature
        self.sampling_temperature = None if temperature is None else float(temperature)
        self.max_tokens = max_tokens
        self.max_completion_tokens = max_completion_tokens
        self.use_logprobs = bool(use_logprobs)
        self.extra_body = dict(extra_body or {})
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_backoff = float(retry_backoff)
        self.max_workers = int(max_workers)
        self.on_unparseable = on_unparseable
        self.name = name or f"openai:{model}"
        self.n_requests = 0  # answered requests
        self.n_unparsed = 0  # of those, replies with no readable verdict (scored as ties, or errors)
        self.n_truncated = 0  # replies the token cap cut off (finish_reason "length")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, both_orders={self.both_orders})")

    __str__ = __repr__

    def stats(self) -> dict[str, int]:
        """Requests answered, replies without a readable verdict, and replies cut off by the token
        cap so far: what a run summary reports (a high unparsed count means the ties are the
        parser's, not the judge's)."""
        with self._lock:
            return {"requests": self.n_requests, "unparsed": self.n_unparsed, "truncated": self.n_truncated}

    # ------------------------------------------------------------------ requests
    def build_payload(self, prompt: str, first: str, second: str) -> dict:
        """Chat-completions body asking whether `first` (shown as A) beats `second` (B)."""
        values = {"prompt": prompt, "a": first, "b": second}
        content = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": content})
        payload: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.sampling_temperature is not None:
            payload["temperature"] = self.sampling_temperature
        if self.max_completion_tokens is not None:  # OpenAI's reasoning models take only this cap
            payload["max_completion_tokens"] = int(self.max_completion_tokens)
        elif self.max_tokens is not None:
            payload["max_tokens"] = int(self.max_tokens)
        if self.use_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = 5
        payload.update(self.extra_body)
        return payload

    def _urllib_transport(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(f"judge {self.name!r}: environment variable {self.api_key_env!r} is not set")
            headers["Authorization"] = "Bearer " + key
        request = urllib.request.Request(f"{self.base_url}/chat/completions", method="POST",
                                         data=json.dumps(payload).encode("utf-8"), headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        text = _KEYLIKE[0].sub(r"\1***", text)
        return _KEYLIKE[1].sub("***", text)

    def _fail(self, message: str) -> JudgeError:
        return JudgeError(self._redact(f"judge {self.name!r}: {message}"))

    def _call(self, payload: dict) -> dict:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._transport(payload)
            except JudgeError as exc:
                raise JudgeError(self._redact(str(exc))) from None
            except (HTTPStatusError, urllib.error.HTTPError) as exc:
                status = exc.status if isinstance(exc, HTTPStatusError) else exc.code
                body = exc.body if isinstance(exc, HTTPStatusError) else _read_body(exc)
                message = f"HTTP {status} from {self.base_url}: {str(body)[:300]}"
                retryable = status in _RETRY_STATUS
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                message = f"cannot reach {self.base_url}: {type(exc).__name__}: {reason}"
                retryable = True
            except Exception as exc:  # a custom transport's own failure
                message = f"request failed: {type(exc).__name__}: {exc}"
                retryable = False
            else:
                with self._lock:
                    self.n_requests += 1
                if not isinstance(response, Mapping):
                    raise self._fail(f"response is {type(response).__name__}, not a JSON object")
                if "choices" not in response and "error" in response:
                    raise self._fail(f"endpoint returned an error: {str(response['error'])[:300]}")
                return dict(response)
            if not retryable or attempt == self.max_retries:
                raise self._fail(message) from None
            time.sleep(self.retry_backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    def _p_first(self, response: dict) -> tuple[float | None, str]:
        """(P(the answer shown as A is better), the reply's text) from one response; P is None when
        no verdict can be read. Only the final answer counts: `content`, never `reasoning_content`."""
        try:
            choice = response["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise self._fail(f"malformed response (no choices): {str(response)[:200]}") from None
        if choice.get("finish_reason") == "length":
            with self._lock:
                self.n_truncated += 1
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            text = choice.get("text") or ""
        if self.use_logprobs:
            p = _p_from_logprobs(choice)
            if p is not None:
                return p, str(text)
        verdict = parse_verdict(str(text))
        if verdict is None:
            return None, str(text)
        return (1.0 if verdict == "A" else 0.0), str(text)

    def _ask(self, job: tuple[str, str, str]) -> float:
        p, text = self._p_first(self._call(self.build_payload(*job)))
        if p is None:
            with self._lock:
                self.n_unparsed += 1
                first = self.n_unparsed == 1
            if self.on_unparseable == "error":
                raise self._fail(f"could not read 'A' or 'B' from the reply {text[:200]!r}")
            if first:
                _log.warning(self._redact(
                    f"judge {self.name!r}: no verdict in the reply {text[:200]!r}; scored as a tie, and counted "
                    "(judge.stats()['unparsed']); a reasoning model needs max_tokens: null or a larger cap"))
            return 0.5
        return p

    def _run(self, jobs: list[tuple[str, str, str]]) -> np.ndarray:
        if self.max_workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(jobs))) as pool:
                return np.asarray(list(pool.map(self._ask, jobs)), dtype=np.float64)
        return np.asarray([self._ask(j) for j in jobs], dtype=np.float64)

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        n = len(prompts)
        jobs = list(zip(prompts, a, b))
        if self.both_orders:
            jobs += list(zip(prompts, b, a))
        p = self._run(jobs)
        if not self.both_orders:
            return p
        return 0.5 * (p[:n] + 1.0 - p[n:])


def endpoint_stats(judge: Judge | None) -> dict[str, int] | None:
    """`OpenAIJudge.stats()` of the endpoint judge under any wrappers (`CachedJudge`,
    `distributed.ShardedJudge`: each keeps its judge as `.inner`); None for any other judge. Under
    several processes these are this process's requests only."""
    seen = 0
    while judge is not None and not isinstance(judge, OpenAIJudge) and seen < 8:
        judge, seen = getattr(judge, "inner", None), seen + 1
    return judge.stats() if isinstance(judge, OpenAIJudge) else None


def _read_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", "replace")
    except Exception:
        return str(getattr(exc, "reason", ""))


def _p_from_logprobs(choice: Mapping[str, Any]) -> float | None:
    try:
        first = choice["logprobs"]["content"][0]
        tops = first.get("top_logprobs") or [first]
    except (KeyError, IndexError, TypeError):
        return None
    lp: dict[str, float] = {}
    for item in tops:
        token = str(item.get("token", "")).strip().strip("*\"'([").upper()
        if token in ("A", "B") and token not in lp:
            lp[token] = float(item["logprob"])
    if not lp:
        return None
    pa = math.exp(lp["A"]) if "A" in lp else 0.0
    pb = math.exp(lp["B"]) if "B" in lp else 0.0
    return pa / (pa + pb) if pa + pb > 0 else None

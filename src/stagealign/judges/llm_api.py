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
"""

from __future__ import annotations

import json
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
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_VERDICTS = (
    re.compile(r"^[\s\W]*([AB])[\s\W]*$", re.IGNORECASE),  # "A", "**B**", "(A).", "[[B]]", "a"
    re.compile(r"\[\[\s*([AB])\s*\]\]"),  # "... final verdict: [[A]]"
    re.compile(r"^[\s\"'*(\[]*([AB])(?:[.:,)\]*]|\s*\n)"),  # "A. because ..." / "B:\n..."
    re.compile(r"(?i:answer|verdict|choice|winner|better(?:\s+answer)?(?:\s+is)?)\W{0,3}\s*"
               r"(?i:answer\s+)?[\"'*(\[]*([AB])\b"),  # "The better answer is B"
)
_KEYLIKE = (re.compile(r"(?i)(bearer\s+)\S+"), re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"))


class HTTPStatusError(Exception):
    """Raised by a transport for a non-2xx HTTP answer (status code and response body)."""

    def __init__(self, status: int, body: str = ""):
        super().__init__(f"HTTP {status}: {body}")
        self.status = int(status)
        self.body = body


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None from a judge's reply."""
    text = _THINK.sub(" ", text or "").strip()
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
        sampling_temperature: float = 0.0,
        max_tokens: int | None = 16,
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
        self.sampling_temperature = float(sampling_temperature)
        self.max_tokens = max_tokens
        self.use_logprobs = bool(use_logprobs)
        self.extra_body = dict(extra_body or {})
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_backoff = float(retry_backoff)
        self.max_workers = int(max_workers)
        self.on_unparseable = on_unparseable
        self.name = name or f"openai:{model}"
        self.n_requests = 0
        self.n_unparsed = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, both_orders={self.both_orders})")

    __str__ = __repr__

    # ------------------------------------------------------------------ requests
    def build_payload(self, prompt: str, first: str, second: str) -> dict:
        """Chat-completions body asking whether `first` (shown as A) beats `second` (B)."""
        values = {"prompt": prompt, "a": first, "b": second}
        content = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": content})
        payload: dict[str, Any] = {"model": self.model, "messages": messages,
                                   "temperature": self.sampling_temperature}
        if self.max_tokens is not None:
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

    def _p_first(self, response: dict) -> float | None:
        """P(the answer shown as A is better) from one response, None when unreadable."""
        try:
            choice = response["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise self._fail(f"malformed response (no choices): {str(response)[:200]}") from None
        if self.use_logprobs:
            p = _p_from_logprobs(choice)
            if p is not None:
                return p
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            text = choice.get("text", "")
        verdict = parse_verdict(str(text))
        if verdict is None:
            return None
        return 1.0 if verdict == "A" else 0.0

    def _ask(self, job: tuple[str, str, str]) -> float:
        p = self._p_first(self._call(self.build_payload(*job)))
        if p is None:
            with self._lock:
                self.n_unparsed += 1
            if self.on_unparseable == "error":
                raise self._fail("could not read 'A' or 'B' from the reply")
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

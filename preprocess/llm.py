"""Talking to an OpenAI-compatible chat LLM: the client, retries, the per-clip reply cache, images
as data URLs, JSON replies.

In: a base URL, an API key and a model name (flags, else OPENAI_BASE_URL / OPENAI_API_KEY / LLM_MODEL).
Out: validated replies. Two kinds of failure are kept apart:
- the service is unavailable (HTTP 429, 5xx, timeouts, connection errors): retried with exponential
  backoff (honouring Retry-After), then `LLMUnavailable`; the step records the clip as failed so
  a later run (`--retry_failed`) can do it again;
- the reply is unusable (not JSON, missing or invalid fields, a chain of thought that fails
  validation): asked again up to `tries` times, then `LLMReplyError`; the caller falls back or
  skips the item, as the original did.
Every reply received is appended to the clip's reply cache (`ReplyCache`) before it is used: a
clip redone after a kill or Ctrl-C replays those replies instead of paying for them again.
The API key is registered with `preprocess.redact` and scrubbed from replies and error messages
as they arrive, so no part of it reaches a log, a record or a file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from dift.core.cli import UsageError

from . import redact
from .arguments import DEFAULT_LLM_MODEL, LLMArguments
from .layout import append_line, read_complete_lines
from .records import loads_strict
from .runner import ClipFailure, stopping

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MODEL = DEFAULT_LLM_MODEL
TRACE_HEADER = "X-Trace-Id"  # "<clip id>/<task>": lets logs (and the loopback server) tell calls apart
_RETRYABLE_STATUS = {408, 409, 429}

__all__ = ["LLMArguments", "LLMClient", "ClipLLM", "ReplyCache", "LLMUnavailable", "LLMReplyError", "ReplyInvalid"]


class LLMUnavailable(RuntimeError):
    """The service kept failing (429, 5xx, timeouts) after every retry."""


class LLMReplyError(RuntimeError):
    """Every reply was unusable (invalid JSON, missing fields, failed validation)."""


class ReplyInvalid(ValueError):
    """One reply is unusable; the message says why (raised by parse/validate functions)."""


def image_data_url(image: str | Path | Image.Image | np.ndarray) -> str:
    """A base64 JPEG data URL; a .jpg file is sent as its own bytes (no re-encoding)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            data = path.read_bytes()
        else:
            with Image.open(path) as img:
                return image_data_url(img.convert("RGB"))
    else:
        img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def image_part(image) -> dict:
    return {"type": "image_url", "image_url": {"url": image_data_url(image)}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def extract_json(text: str) -> dict:
    """The JSON object in a reply (inside a ```json fence if there is one); ReplyInvalid otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyInvalid("empty reply")
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S | re.I)
    body = fence.group(1) if fence else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ReplyInvalid(f"no JSON object in reply: {text[:80]!r}")
    try:
        obj = loads_strict(body[start:end + 1])
    except json.JSONDecodeError as err:
        raise ReplyInvalid(f"invalid JSON ({err.msg}): {text[:80]!r}") from None
    except ValueError as err:  # a repeated key, NaN: no silently chosen value
        raise ReplyInvalid(f"invalid JSON ({err}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ReplyInvalid("the JSON reply is not an object")
    return obj


def require_fields(obj: dict, *names: str) -> None:
    if not isinstance(obj, dict):
        raise ReplyInvalid(f"expected a JSON object with {', '.join(names)}, got {type(obj).__name__}")
    missing = [n for n in names if n not in obj]
    if missing:
        raise ReplyInvalid(f"missing field(s) {', '.join(missing)} in {json.dumps(obj)[:120]}")


def request_digest(model: str, messages: list, temperature: float, max_tokens: int) -> str:
    """What identifies a request in the reply cache (with its trace): everything that decides the reply."""
    body = json.dumps({"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens},
                      sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(body.encode()).hexdigest()


class ReplyCache:
    """The replies one clip has received, keyed by (trace, request digest), kept append-only in a
    JSONL file. A redone clip asks the same requests under the same traces in the same order (its
    random choices come from its own seeded generator), so each is answered from here."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.replies: dict[tuple[str, str], str] = {}
        for line in read_complete_lines(self.path):
            try:
                rec = json.loads(line)
                self.replies[(rec["trace"], rec["request"])] = str(rec["reply"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s: ignored a line that is not a cached reply", self.path)
        self.hits = 0

    def get(self, trace: str, digest: str) -> str | None:
        reply = self.replies.get((trace, digest))
        self.hits += reply is not None
        return reply

    def add(self, trace: str, digest: str, reply: str) -> None:
        append_line(self.path, json.dumps({"trace": trace, "request": digest, "reply": reply}, ensure_ascii=False))
        self.replies[(trace, digest)] = reply


class LLMClient:
    """A thread-safe chat client (one per step; worker threads share it: concurrent requests)."""

    def __init__(self, args: LLMArguments):
        import openai

        self.args = args
        base_url = args.llm_base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = args.llm_api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise UsageError("no API key: set OPENAI_API_KEY (or --llm_api_key)")
        redact.register(api_key)
        self.requests = 0  # sent to the service (cache hits excluded)
        self._count_lock = threading.Lock()
        self.model = args.llm_model or os.environ.get("LLM_MODEL") or DEFAULT_MODEL
        self._openai = openai
        # max_retries=0: the retry loop below owns retries, so one policy covers every error kind
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=args.llm_timeout, max_retries=0)
        log.info("LLM: model %s at %s", self.model, base_url or "the default OpenAI endpoint")

    def for_clip(self, cache_path: str | Path) -> ClipLLM:
        """This client with one clip's reply cache (`StepState.replies_path`)."""
        return ClipLLM(self, ReplyCache(cache_path))

    def _delay(self, attempt: int, err) -> float:
        retry_after = None
        response = getattr(err, "response", None)
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after", ""))
            except (TypeError, ValueError):
                retry_after = None
        if retry_after is not None and 0 <= retry_after <= 60:
            return retry_after
        base = self.args.llm_backoff * (2 ** attempt)
        return min(60.0, base * (1 + 0.25 * random.random()))  # jitter spreads concurrent retries

    def complete(self, content: Sequence[dict], trace: str, max_tokens: int | None = None,
                 cache: ReplyCache | None = None) -> str:
        """One user message -> the reply text (secrets scrubbed), from `cache` if it was received
        before, else from the service, retrying transient failures; a received reply is cached."""
        messages = [{"role": "user", "content": list(content)}]
        max_tokens = max_tokens or self.args.llm_max_tokens
        digest = request_digest(self.model, messages, self.args.llm_temperature, max_tokens) if cache else ""
        if cache is not None and (cached := cache.get(trace, digest)) is not None:
            return cached
        text = redact.scrub(self._request(messages, trace, max_tokens))
        if cache is not None:
            cache.add(trace, digest, text)
        return text

    def _request(self, messages: list, trace: str, max_tokens: int) -> str:
        openai = self._openai
        last, last_err = None, None
        for attempt in range(self.args.llm_retries + 1):
            if stopping.is_set():  # Ctrl-C: a clip being abandoned must not pay for more requests
                raise ClipFailure("interrupted")
            try:
                with self._count_lock:
                    self.requests += 1
                resp = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.args.llm_temperature,
                    max_tokens=max_tokens, extra_headers={TRACE_HEADER: trace})
                text = resp.choices[0].message.content if resp.choices else None
                return text or ""
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                last, last_err = type(err).__name__, err
            except openai.APIStatusError as err:
                if err.status_code not in _RETRYABLE_STATUS and err.status_code < 500:
                    # the service's own message (scrubbed: some echo the key they were sent), cut short
                    raise LLMUnavailable(redact.scrub(f"{trace}: HTTP {err.status_code} (not retried): {err}")[:300]) from None
                last, last_err = f"HTTP {err.status_code}", err
            if attempt < self.args.llm_retries:
                delay = self._delay(attempt, last_err)
                log.info("%s: %s, retry %d/%d in %.1fs", trace, last, attempt + 1, self.args.llm_retries, delay)
                stopping.wait(delay)
        raise LLMUnavailable(f"{trace}: {last} after {self.args.llm_retries + 1} attempts")

    def ask(self, content: Sequence[dict], parse: Callable[[str], T], trace: str, tries: int | None = None,
            max_tokens: int | None = None, cache: ReplyCache | None = None) -> T:
        """Ask until `parse(reply)` accepts a reply (it raises ReplyInvalid otherwise)."""
        tries = tries or self.args.llm_tries
        reason = ""
        for attempt in range(tries):
            text = self.complete(content, f"{trace}/{attempt}", max_tokens, cache)
            try:
                return parse(text)
            except ReplyInvalid as err:
                reason = str(err)
                log.info("%s: unusable reply (try %d/%d): %s", trace, attempt + 1, tries, reason)
        raise LLMReplyError(redact.scrub(f"{trace}: no usable reply in {tries} tries (last: {reason})"))

    def ask_json(self, content: Sequence[dict], validate: Callable[[dict], T], trace: str, **kw) -> T:
        """Ask for a JSON object and validate it (validate raises ReplyInvalid)."""
        return self.ask(content, lambda text: validate(extract_json(text)), trace, **kw)


class ClipLLM:
    """An `LLMClient` bound to one clip's reply cache: what a step's per-clip code asks through."""

    def __init__(self, client: LLMClient, cache: ReplyCache):
        self.client, self.cache = client, cache

    def ask(self, content: Sequence[dict], parse: Callable[[str], T], trace: str, tries: int | None = None,
            max_tokens: int | None = None) -> T:
        return self.client.ask(content, parse, trace, tries, max_tokens, cache=self.cache)

    def ask_json(self, content: Sequence[dict], validate: Callable[[dict], T], trace: str, **kw) -> T:
        return self.client.ask_json(content, validate, trace, cache=self.cache, **kw)

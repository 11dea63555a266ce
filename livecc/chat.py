"""A small client for OpenAI-compatible chat-completion endpoints (OpenAI, Azure, vLLM, ...).

Standard library only. Every request has a timeout; retries (connection errors, timeouts, 429 and
5xx) back off exponentially, are logged as they happen, and stop at ``max_retries`` or when the
request's total ``deadline`` would pass, whichever comes first. An optional rate limit (requests
per second) is shared by all threads using the client.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request

__all__ = ["ChatClient", "ChatError"]

_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
log = logging.getLogger("livecc.chat")


class ChatError(RuntimeError):
    """A request that failed for good (after retries, or with a non-retryable status)."""


class ChatClient:
    def __init__(self, base_url: str | None = None, model: str = "gpt-4o-2024-08-06", api_key: str | None = None, *,
                 azure_api_version: str | None = None, max_retries: int = 4, backoff: float = 1.0,
                 timeout: float = 60.0, deadline: float = 300.0, requests_per_second: float | None = None):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.azure_api_version = azure_api_version
        self.max_retries, self.backoff, self.timeout, self.deadline = max_retries, backoff, timeout, deadline
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_slot = 0.0
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0

    def _url_and_headers(self) -> tuple[str, dict]:
        headers = {"Content-Type": "application/json"}
        if self.azure_api_version:  # Azure: deployment in the path, key in its own header
            url = (f"{self.base_url}/openai/deployments/{self.model}/chat/completions"
                   f"?api-version={self.azure_api_version}")
            headers["api-key"] = self.api_key
        else:
            url = f"{self.base_url}/chat/completions"
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
        return url, headers

    def _wait_for_slot(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        if slot > now:
            time.sleep(slot - now)

    def complete(self, prompt: str, **params) -> str:
        """The assistant's text for a one-message conversation."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], **params}
        data = json.dumps(body).encode()
        url, headers = self._url_and_headers()
        give_up = time.monotonic() + self.deadline
        for attempt in range(self.max_retries + 1):
            self._wait_for_slot()
            timeout = min(self.timeout, give_up - time.monotonic())
            if timeout <= 0:
                raise ChatError(f"{url}: no answer within the {self.deadline:g} s deadline ({attempt} attempts)")
            try:
                with self._lock:
                    self.requests += 1
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    payload = json.loads(response.read())
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                if e.code not in _RETRYABLE or attempt == self.max_retries:
                    raise ChatError(f"{url}: HTTP {e.code} {e.reason}") from e
                why = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError) as e:
                if attempt == self.max_retries:
                    raise ChatError(f"{url}: {type(e).__name__}: {e} ({attempt + 1} attempts)") from e
                why = f"{type(e).__name__}: {e}"
            with self._lock:
                self.retries += 1
            wait = min(self.backoff * 2**attempt * (0.5 + random.random() / 2),  # jittered exponential
                       max(0.0, give_up - time.monotonic()))
            log.warning("%s: %s; retry %d of %d in %.1f s", url, why, attempt + 1, self.max_retries, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

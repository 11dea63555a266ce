"""A small client for OpenAI-compatible chat-completion endpoints (OpenAI, Azure, vLLM, ...).

Standard library only. Every attempt is bounded in wall-clock time, not only per socket read (a
server that trickles a byte every few seconds is cut off when the attempt's time is up); retries
(connection errors, timeouts, responses that are not HTTP, 429 and 5xx) back off exponentially,
are logged as they happen, and stop at ``max_retries`` or when the request's total ``deadline``
would pass, whichever comes first. An optional rate limit (requests per second) is shared by all
threads using the client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
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
                status, reason, payload = _post(url, data, headers, timeout)
                if status >= 400:
                    if status not in _RETRYABLE or attempt == self.max_retries:
                        raise ChatError(f"{url}: HTTP {status} {reason}")
                    why = f"HTTP {status}"
                else:
                    return json.loads(payload)["choices"][0]["message"]["content"] or ""
            except (OSError, http.client.HTTPException, json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
                what = "not an HTTP response" if isinstance(e, http.client.HTTPException) else type(e).__name__
                if attempt == self.max_retries:
                    raise ChatError(f"{url}: {what}: {e} ({attempt + 1} attempts)") from e
                why = f"{what}: {e}"
            with self._lock:
                self.retries += 1
            wait = min(self.backoff * 2**attempt * (0.5 + random.random() / 2),  # jittered exponential
                       max(0.0, give_up - time.monotonic()))
            log.warning("%s: %s; retry %d of %d in %.1f s", url, why, attempt + 1, self.max_retries, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")


def _post(url: str, data: bytes, headers: dict, seconds: float) -> tuple[int, str, bytes]:
    """``(status, reason, body)`` of one POST, given ``seconds`` in all: connecting, sending and
    every read together. When they are up the socket is shut, which ends any read in progress."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url}: an endpoint is http:// or https://")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    proxy = urllib.request.getproxies().get(parts.scheme)  # HTTP(S)_PROXY, as urllib would use
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        conn = kind(via.hostname, via.port, timeout=seconds)
        if parts.scheme == "https":
            conn.set_tunnel(parts.hostname, parts.port)
        else:
            target = url  # a plain-HTTP proxy takes the whole URL
    else:
        conn = kind(parts.hostname, parts.port, timeout=seconds)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):  # already closed
                conn.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.start()
    try:
        conn.request("POST", target, body=data, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set():
            raise TimeoutError(f"no whole answer within {seconds:.3g} s") from e
        raise
    finally:
        timer.cancel()
        conn.close()
    if expired.is_set():
        raise TimeoutError(f"no whole answer within {seconds:.3g} s")
    return response.status, response.reason, body

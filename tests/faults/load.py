"""A steady streaming load for the fault battery: N clients, each in a loop sending one streaming chat
completion after another with the official `openai` client; every request's outcome is classified
and timestamped, so a case can count what happened in the window around its fault.

    with StreamingLoad(app.api_url, api_key, "tiny-chat", clients=4) as load:
        time.sleep(3)
        fault_at = time.monotonic(); inject()
        time.sleep(10)
    outcomes = load.outcomes                      # everything, in order of start
    in_flight = [o for o in outcomes if o.in_flight_at(fault_at)]

Outcomes (`Outcome.kind`), what a client sees:
- "200": the stream ended with a finish_reason and [DONE].
- "stream error event": the stream carried an OpenAI-shaped error event ({"error": {message, type, ...}})
  and ended; "stream error event (not OpenAI-shaped)" if the event lacked `message` or `type`.
- "<status>+Retry-After" / "<status>": refused before streaming (e.g. "503+Retry-After", "429+Retry-After",
  "500"); `detail` keeps the error body's message.
- "cut without error": the stream ended cleanly without an error and without a finish_reason (a
  silent cut: the client cannot tell it from a complete answer unless it checks finish_reason).
- "connection closed mid-stream": the connection closed before the response was complete (the client
  gets an exception from its HTTP library, no OpenAI error).
- "hang": nothing arrived for `timeout_s` (the client's read timeout).
- "connection refused": nobody listening (the request never reached a server).
- "other: <exception>": anything else (a bug here or there; the detail says which).

Only `OK` ("200") counts as served; `Outcome.failed` is everything else.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set

import httpx
import openai

OK = "200"
STREAM_ERROR = "stream error event"
CUT = "cut without error"
CONNECTION_CLOSED = "connection closed mid-stream"
HANG = "hang"
REFUSED_CONNECTION = "connection refused"


@dataclass
class Outcome:
    client: int  # which of the N clients sent it
    started: float  # time.monotonic() when sent
    ended: float  # when its outcome was known
    kind: str  # see the module docstring
    first_token_at: Optional[float] = None  # when the first content arrived (None: never)
    chunks: int = 0  # content chunks received
    detail: str = ""  # the error message, the exception, for a report

    @property
    def failed(self) -> bool:
        return self.kind != OK

    def in_flight_at(self, moment: float) -> bool:
        """Sent before `moment` and not finished by then."""
        return self.started <= moment < self.ended

    def streaming_at(self, moment: float) -> bool:
        """Had received content (had reached an engine) before `moment` and not finished by then."""
        return self.first_token_at is not None and self.first_token_at <= moment < self.ended


def classify_stream(client: openai.OpenAI, index: int, request: Dict[str, Any],
                    on_first_token: Optional[Callable[[], None]] = None) -> Outcome:
    """Send one streaming request and classify what the client saw (`on_first_token` is called when
    its first content arrives)."""
    outcome = Outcome(client=index, started=time.monotonic(), ended=0.0, kind="")
    finished = False
    try:
        stream = client.chat.completions.create(stream=True, **request)
        for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta and choice.delta.content:
                    if outcome.first_token_at is None:
                        outcome.first_token_at = time.monotonic()
                        if on_first_token is not None:
                            on_first_token()
                    outcome.chunks += 1
                if choice.finish_reason:
                    finished = True
        outcome.kind = OK if finished else CUT
        if not finished:
            outcome.detail = f"stream ended after {outcome.chunks} chunks without finish_reason or error"
    except openai.APIStatusError as error:  # refused before the stream began
        retry_after = error.response.headers.get("retry-after")
        outcome.kind = f"{error.status_code}+Retry-After" if retry_after else str(error.status_code)
        outcome.detail = _message(error.body) or error.message
    except openai.APITimeoutError as error:
        outcome.kind, outcome.detail = HANG, repr(error)
    except openai.APIConnectionError as error:
        cause = error.__cause__
        outcome.kind = REFUSED_CONNECTION if isinstance(cause, httpx.ConnectError) else CONNECTION_CLOSED
        outcome.detail = f"{error!r} caused by {cause!r}"
    except openai.APIError as error:  # an error event inside the stream
        body = error.body if isinstance(error.body, dict) else {}
        shaped = isinstance(body.get("message"), str) and isinstance(body.get("type"), str)
        outcome.kind = STREAM_ERROR if shaped else f"{STREAM_ERROR} (not OpenAI-shaped)"
        outcome.detail = str(body or error.message)[:300]
    except httpx.TimeoutException as error:  # a read timeout while iterating the stream
        outcome.kind, outcome.detail = HANG, repr(error)
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:  # connection closed mid-stream
        outcome.kind, outcome.detail = CONNECTION_CLOSED, f"{error!r} after {outcome.chunks} chunks"
    except Exception as error:  # noqa: BLE001 - classified, not hidden
        outcome.kind, outcome.detail = f"other: {type(error).__name__}", repr(error)[:300]
    outcome.ended = time.monotonic()
    return outcome


def _message(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return ""


class StreamingLoad:
    """`clients` threads, each sending streaming chat completions back to back until stopped.

    Each request asks for `max_tokens` tokens, at least `min_tokens` of them (vLLM's `min_tokens` and
    `ignore_eos`, so a stream lasts long enough to be cut). `timeout_s` is the client's timeout: no
    byte for that long is a "hang". `pause_s` is the wait between a client's requests,
    `pause_after_failure_s` the wait after one that failed (so a refusal loop does not swamp the counts).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        model: str,
        *,
        clients: int = 4,
        max_tokens: int = 64,
        min_tokens: Optional[int] = None,
        timeout_s: float = 60.0,
        pause_s: float = 0.0,
        pause_after_failure_s: float = 0.5,
        extra_headers: Optional[Dict[str, str]] = None,
    ):
        self.clients = clients
        self.pause_s = pause_s
        self.pause_after_failure_s = pause_after_failure_s
        self._client = openai.OpenAI(base_url=api_url, api_key=api_key, max_retries=0, timeout=timeout_s)
        self._request: Dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens,
            "extra_body": {"ignore_eos": True, "min_tokens": max_tokens if min_tokens is None else min_tokens},
        }
        if extra_headers:
            self._request["extra_headers"] = extra_headers
        self._outcomes: List[Outcome] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._streaming: Set[int] = set()  # clients that have content and are not finished

    def start(self) -> StreamingLoad:
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, wait_s: float = 120.0) -> List[Outcome]:
        """Stop sending; wait for the requests in flight (each ends within the client's timeout)."""
        self._stopping.set()
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.outcomes

    def __enter__(self) -> StreamingLoad:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def outcomes(self) -> List[Outcome]:
        with self._lock:
            return sorted(self._outcomes, key=lambda outcome: outcome.started)

    def wait_for(self, count: int, kind: str = OK, timeout_s: float = 120.0) -> bool:
        """Wait until at least `count` outcomes of `kind` were recorded; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(outcome.kind == kind for outcome in self.outcomes) >= count:
                return True
            time.sleep(0.1)
        return False

    def wait_streaming(self, count: int, timeout_s: float = 60.0) -> bool:
        """Wait until `count` clients are mid-stream at once (content received, not finished);
        False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.streaming_now() >= count:
                return True
            time.sleep(0.02)
        return False

    def streaming_now(self) -> int:
        with self._lock:
            return len(self._streaming)

    def _loop(self, index: int) -> None:
        def on_first_token() -> None:
            with self._lock:
                self._streaming.add(index)

        while not self._stopping.is_set():
            outcome = classify_stream(self._client, index, self._request, on_first_token)
            with self._lock:
                self._streaming.discard(index)
                self._outcomes.append(outcome)
            pause = self.pause_after_failure_s if outcome.failed else self.pause_s
            if pause:
                self._stopping.wait(pause)


def summarize(outcomes: List[Outcome]) -> Dict[str, int]:
    """{kind: count}, most common first."""
    counts: Dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))

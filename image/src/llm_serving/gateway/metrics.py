"""What the gateway measures of each request, and its Prometheus metrics.

The metrics are Ray Serve metrics, so they leave through the same Ray metrics port as Serve's and
vLLM's (exported as ray_llm_serving_*, with Serve's deployment/replica/application labels added).
Token counts come from the responses' `usage`; for streams the gateway asks the engine for the
final usage chunk and removes it again when the client did not ask for it itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from starlette.types import Message, Send

from llm_serving.batch.endpoints import match_batch_endpoint
from llm_serving.rag.endpoints import match_rag_endpoint

ANONYMOUS = "anonymous"
NO_MODEL = "none"
NO_ADAPTER = "none"  # the `adapter` label of a request to a model itself
CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
EMBEDDINGS_ROUTE = "/v1/embeddings"
# Routes get their own label value; anything else is "other", so label cardinality stays bounded.
KNOWN_ROUTES = {CHAT_ROUTE, COMPLETIONS_ROUTE, EMBEDDINGS_ROUTE, "/v1/models"}
STREAMING_ROUTES = {CHAT_ROUTE, COMPLETIONS_ROUTE}
LATENCY_BUCKETS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000]


def route_label(path: str) -> str:
    """The route as a label value; RAG and Batch routes by their template (names and ids in labels
    would be unbounded)."""
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    matched = match_rag_endpoint(path) or match_batch_endpoint(path)
    return matched[0].template if matched is not None else "other"


@dataclass
class Exchange:
    """One request and its response, as the gateway saw them."""

    route: str
    started: float = field(default_factory=time.perf_counter)
    model: str = NO_MODEL
    # The served model: the variant an alias resolved to, else the model itself (bounded: served models).
    variant: str = NO_MODEL
    # The LoRA adapter of a `<model>:<adapter>` request (bounded: adapters that exist), `model` its base.
    adapter: str = NO_ADAPTER
    api_key: str = ANONYMOUS
    status: int = 0  # 0: no response (a shadow copy that was dropped)
    shadow: bool = False  # a copy sent by the gateway itself (traffic.aliases.*.shadow), not a client's
    limits_uncounted: bool = False  # admitted without counting against the key's limits (store unreachable)
    finished: Optional[float] = None
    first_event_at: Optional[float] = None
    inter_event_ms: List[float] = field(default_factory=list)
    prompt_tokens: Optional[int] = None
    generated_tokens: Optional[int] = None
    _streaming: bool = False
    _hide_usage_chunk: bool = False
    _last_event_at: Optional[float] = None
    _json_chunks: List[bytes] = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        return ((self.finished or time.perf_counter()) - self.started) * 1000

    @property
    def time_to_first_token_ms(self) -> Optional[float]:
        return None if self.first_event_at is None else (self.first_event_at - self.started) * 1000

    def request_usage_in_stream(self, payload: Dict[str, Any], body: bytes) -> bytes:
        """For a streamed completion, ask the engine to end with a usage chunk (our token counts)."""
        if self.route not in STREAMING_ROUTES or payload.get("stream") is not True:
            return body
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return body
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        self._hide_usage_chunk = True
        return json.dumps(payload).encode()

    def observe(self, send: Send) -> Callable[[Message], Any]:
        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                self._streaming = content_type.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if self._streaming and body:
                    message = {**message, "body": self._observe_events(body)}
                elif self.status == 200 and body and self.route in KNOWN_ROUTES:
                    self._json_chunks.append(body)
                if not message.get("more_body", False):
                    self._finish()
            await send(message)

        return observed

    def _observe_events(self, chunk: bytes) -> bytes:
        now = time.perf_counter()
        kept = []
        for event in chunk.split(b"\n\n"):
            if event.startswith(b"data: {"):
                usage_only = b'"usage"' in event and self._take_usage(event[len(b"data: ") :])
                if usage_only:
                    if self._hide_usage_chunk:
                        continue
                else:
                    if self.first_event_at is None:
                        self.first_event_at = now
                    elif self._last_event_at is not None:
                        self.inter_event_ms.append((now - self._last_event_at) * 1000)
                    self._last_event_at = now
            kept.append(event)
        return b"\n\n".join(kept)

    def _take_usage(self, data: bytes) -> bool:
        """Record the usage in one event; True when the event carries nothing else (no choices)."""
        try:
            event = json.loads(data)
        except ValueError:
            return False
        self._record_usage(event.get("usage"))
        return not event.get("choices")

    def _record_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens")
            self.generated_tokens = usage.get("completion_tokens")

    def _finish(self) -> None:
        self.finished = time.perf_counter()
        if self._json_chunks:
            try:
                self._record_usage(json.loads(b"".join(self._json_chunks)).get("usage"))
            except (ValueError, AttributeError):
                pass
            self._json_chunks = []


class GatewayMetrics:
    """Ray Serve metrics of the gateway; create it inside a Serve replica."""

    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "llm_serving_requests",
            description=(
                "Requests answered by the gateway, by model (as requested: a model or an alias), variant "
                "(the model that served it), LoRA adapter (none: the model itself), API key name, route and "
                "status code."
            ),
            tag_keys=("model", "variant", "adapter", "api_key", "route", "status_code"),
        )
        self.latency = metrics.Histogram(
            "llm_serving_request_latency_ms",
            description="End-to-end request latency at the gateway, in milliseconds.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "variant", "route"),
        )
        self.time_to_first_token = metrics.Histogram(
            "llm_serving_time_to_first_token_ms",
            description="Time from request to the first streamed event, in milliseconds.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "variant"),
        )
        self.inter_token_latency = metrics.Histogram(
            "llm_serving_inter_token_latency_ms",
            description="Time between streamed events (tokens), in milliseconds.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model",),
        )
        self.prompt_tokens = metrics.Counter(
            "llm_serving_prompt_tokens",
            description="Prompt tokens of answered requests, by model, LoRA adapter and API key name.",
            tag_keys=("model", "adapter", "api_key"),
        )
        self.generated_tokens = metrics.Counter(
            "llm_serving_generated_tokens",
            description="Generated tokens of answered requests, by model, LoRA adapter and API key name.",
            tag_keys=("model", "adapter", "api_key"),
        )
        self.shadow_requests = metrics.Counter(
            "llm_serving_shadow_requests",
            description=(
                "Shadow copies of alias requests, by alias (model), the model that got the copy (variant) and "
                "its status code (dropped: not sent, too many copies in flight, or cancelled unanswered)."
            ),
            tag_keys=("model", "variant", "status_code"),
        )
        self.shadow_latency = metrics.Histogram(
            "llm_serving_shadow_request_latency_ms",
            description="Latency of shadow copies (answered in one piece), in milliseconds.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "variant"),
        )

        self.limits_uncounted = metrics.Counter(
            "llm_serving_limits_uncounted_requests",
            description=(
                "Requests admitted without counting against their API key's limits because the limits store "
                "(Redis) was unreachable, by API key name."
            ),
            tag_keys=("api_key",),
        )

    def record(self, exchange: Exchange) -> None:
        model, variant, key, adapter = exchange.model, exchange.variant, exchange.api_key, exchange.adapter
        if exchange.shadow:  # kept apart: clients never saw these
            self.shadow_requests.inc(
                tags={
                    "model": model,
                    "variant": variant,
                    "status_code": str(exchange.status) if exchange.status else "dropped",
                }
            )
            if exchange.status:
                self.shadow_latency.observe(exchange.latency_ms, tags={"model": model, "variant": variant})
            return
        if exchange.limits_uncounted:
            self.limits_uncounted.inc(tags={"api_key": key})
        self.requests.inc(
            tags={
                "model": model,
                "variant": variant,
                "adapter": adapter,
                "api_key": key,
                "route": exchange.route,
                "status_code": str(exchange.status),
            }
        )
        self.latency.observe(exchange.latency_ms, tags={"model": model, "variant": variant, "route": exchange.route})
        if exchange.time_to_first_token_ms is not None:
            self.time_to_first_token.observe(exchange.time_to_first_token_ms, tags={"model": model, "variant": variant})
        for gap in exchange.inter_event_ms:
            self.inter_token_latency.observe(gap, tags={"model": model})
        if exchange.prompt_tokens:
            self.prompt_tokens.inc(exchange.prompt_tokens, tags={"model": model, "adapter": adapter, "api_key": key})
        if exchange.generated_tokens:
            self.generated_tokens.inc(
                exchange.generated_tokens, tags={"model": model, "adapter": adapter, "api_key": key}
            )

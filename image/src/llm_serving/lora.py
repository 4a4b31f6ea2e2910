"""LoRA adapters of a model, served multiplexed: `model: "<model>:<adapter>"`.

A model's `lora.source` is a folder with one subfolder per adapter (peft's files). Ray Serve LLM
2.60 reads such folders only from cloud storage (its LoraConfig rejects any other path), so a local
or mounted folder (a PVC, or the built-in tiny adapters) is handled here: the gateway lists adapters
from either kind, and the engine replica loads a local adapter in place, with no copy. Ray Serve's
model multiplexing does the rest: a replica loads an adapter on its first request and later requests
for it are routed to the replicas that hold it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from llm_serving._ray import list_cloud_subfolders
from llm_serving.builtin_models import resolve_adapters_source
from llm_serving.config import REMOTE_ADAPTER_SCHEMES

ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's (and Ray's LORA_ADAPTER_CONFIG_NAME)
# How long a listing of a model's adapters is trusted: new adapters show up within this, and a busy
# gateway lists a bucket at most this often.
ADAPTER_LISTING_TTL_S = 10.0


def split_adapter(model: str) -> Tuple[str, Optional[str]]:
    """`base:adapter` -> (base, adapter); a name without ':' -> (name, None). As Ray Serve LLM splits
    it (ray/llm/_internal/common/utils/lora_utils.py, get_base_model_id / get_lora_id)."""
    base, sep, adapter = model.partition(":")
    return (base, adapter) if sep else (model, None)


def is_remote(source: str) -> bool:
    return source.startswith(REMOTE_ADAPTER_SCHEMES)


def list_adapters(source: str) -> List[str]:
    """Names of the adapters under `source` (blocking: a bucket listing or a directory read)."""
    if is_remote(source):
        return sorted(list_cloud_subfolders(source))
    folder = Path(resolve_adapters_source(source))
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class AdapterCatalog:
    """The adapters each LoRA model has, listed at most every ADAPTER_LISTING_TTL_S per model."""

    def __init__(
        self,
        sources: Dict[str, str],
        lister: Callable[[str], List[str]] = list_adapters,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._sources = dict(sources)
        self._lister, self._clock = lister, clock
        self._listed: Dict[str, Tuple[float, List[str]]] = {}

    def has_adapters(self, model: str) -> bool:
        return model in self._sources

    async def adapters(self, model: str) -> List[str]:
        """The model's adapter names ([] for a model without lora)."""
        source = self._sources.get(model)
        if source is None:
            return []
        cached = self._listed.get(model)
        if cached is not None and self._clock() - cached[0] < ADAPTER_LISTING_TTL_S:
            return cached[1]
        names = await asyncio.to_thread(self._lister, source)
        self._listed[model] = (self._clock(), names)
        return names


class AdapterLoadError(Exception):
    """An engine replica could not load an adapter (missing or bad files, too large a rank); the
    message is the reason. Raised in the replica; the ingress answers it with AdapterUnavailable."""

    def __init__(self, model: str, reason: str):
        self.model, self.reason = model, reason
        super().__init__(model, reason)

    def __str__(self) -> str:
        return f"{self.model}: {self.reason}"


class AdapterUnavailable(Exception):
    """What the client gets for AdapterLoadError: 503 naming the adapter and the reason (Ray Serve
    LLM's exception handler answers with `status_code`, as for gateway.stream_failures.EngineUnavailable).
    503, not 4xx: the request is valid, the server's copy of the adapter is not; it works again once
    an operator fixes the files."""

    status_code = 503

    def __init__(self, model: str, reason: str):
        self.message = f"The adapter `{model}` could not be loaded: {reason}"
        super().__init__(self.message)

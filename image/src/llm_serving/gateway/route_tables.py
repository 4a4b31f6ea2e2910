"""The route tables of the gateway's own APIs (RAG: rag/endpoints.py, Batch: batch/endpoints.py), in
one shape: their routes modules bind handlers to them, and the gateway labels its metrics by them
and leaves their paths out of its model checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

from llm_serving.gateway.errors import GatewayError


@dataclass(frozen=True)
class Endpoint:
    # The path with its names or ids as placeholders: the metrics' route label (a collection name
    # or an object id in a label would be unbounded).
    template: str
    pattern: re.Pattern
    # HTTP method -> the operation that answers it (a handler of that name in the routes module).
    operations: Mapping[str, str]

    def operation(self, method: str) -> str:
        """The operation for `method`, or 405 naming the methods this path takes."""
        operation = self.operations.get(method)
        if operation is None:
            raise GatewayError(
                405, f"{method} is not allowed here; use {', '.join(self.operations)}.", code="method_not_allowed"
            )
        return operation


def match_endpoint(endpoints: Iterable[Endpoint], path: str) -> Optional[Tuple[Endpoint, Dict[str, str]]]:
    """The endpoint at `path` and the names in it, or None."""
    for endpoint in endpoints:
        match = endpoint.pattern.fullmatch(path)
        if match is not None:
            return endpoint, match.groupdict()
    return None

"""The RAG API's route table, written once: rag/routes.py binds its handlers to it, and the gateway
labels its metrics by it and leaves these paths out of its model checks.

Imports nothing of ours, so the gateway can read it without loading the RAG layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

# The RAG API names collections, not models.
RAG_PATH_PREFIX = "/v1/rag/"
_COLLECTION = r"/v1/rag/collections/(?P<name>[^/]+)"


@dataclass(frozen=True)
class RagEndpoint:
    # The path with its names as placeholders: the metrics' route label (a collection or document
    # name in a label would be unbounded).
    template: str
    pattern: re.Pattern
    # HTTP method -> the operation that answers it (a RagRoutes handler of that name).
    operations: Mapping[str, str]


RAG_ENDPOINTS: Tuple[RagEndpoint, ...] = (
    RagEndpoint(
        "/v1/rag/collections",
        re.compile(r"/v1/rag/collections"),
        {"GET": "list_collections", "POST": "create_collection"},
    ),
    RagEndpoint(
        "/v1/rag/collections/{name}", re.compile(_COLLECTION), {"GET": "get_collection", "DELETE": "delete_collection"}
    ),
    RagEndpoint(
        "/v1/rag/collections/{name}/documents", re.compile(_COLLECTION + r"/documents"), {"POST": "add_documents"}
    ),
    RagEndpoint(
        "/v1/rag/collections/{name}/documents/{id}",
        re.compile(_COLLECTION + r"/documents/(?P<document_id>.+)"),
        {"DELETE": "delete_document"},
    ),
    RagEndpoint("/v1/rag/collections/{name}/search", re.compile(_COLLECTION + r"/search"), {"POST": "search"}),
)


def match_rag_endpoint(path: str) -> Optional[Tuple[RagEndpoint, Dict[str, str]]]:
    """The endpoint at `path` and the names in it (collection `name`, `document_id`), or None."""
    for endpoint in RAG_ENDPOINTS:
        match = endpoint.pattern.fullmatch(path)
        if match is not None:
            return endpoint, match.groupdict()
    return None

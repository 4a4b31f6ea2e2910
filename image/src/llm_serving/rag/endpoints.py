"""The RAG API's route table, written once: rag/routes.py binds its handlers to it, and the gateway
labels its metrics by it and leaves these paths out of its model checks.

Imports nothing of the RAG layer, so the gateway can read it without loading that layer.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from llm_serving.gateway.route_tables import Endpoint, match_endpoint

# The RAG API names collections, not models.
RAG_PATH_PREFIX = "/v1/rag/"
_COLLECTION = r"/v1/rag/collections/(?P<name>[^/]+)"


RAG_ENDPOINTS: Tuple[Endpoint, ...] = (
    Endpoint(
        "/v1/rag/collections",
        re.compile(r"/v1/rag/collections"),
        {"GET": "list_collections", "POST": "create_collection"},
    ),
    Endpoint(
        "/v1/rag/collections/{name}", re.compile(_COLLECTION), {"GET": "get_collection", "DELETE": "delete_collection"}
    ),
    Endpoint(
        "/v1/rag/collections/{name}/documents", re.compile(_COLLECTION + r"/documents"), {"POST": "add_documents"}
    ),
    Endpoint(
        "/v1/rag/collections/{name}/documents/{id}",
        re.compile(_COLLECTION + r"/documents/(?P<document_id>.+)"),
        {"DELETE": "delete_document"},
    ),
    Endpoint("/v1/rag/collections/{name}/search", re.compile(_COLLECTION + r"/search"), {"POST": "search"}),
)


def match_rag_endpoint(path: str) -> Optional[Tuple[Endpoint, Dict[str, str]]]:
    """The endpoint at `path` and the names in it (collection `name`, `document_id`), or None."""
    return match_endpoint(RAG_ENDPOINTS, path)

"""The Batch API's route table, written once: batch/routes.py binds its handlers to it, and the
gateway labels its metrics by it and leaves these paths out of its model checks.

Imports nothing of the Batch layer, so the gateway can read it without loading that layer.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from llm_serving.gateway.route_tables import Endpoint, match_endpoint

FILES_PATH = "/v1/files"
BATCHES_PATH = "/v1/batches"


BATCH_ENDPOINTS: Tuple[Endpoint, ...] = (
    Endpoint(FILES_PATH, re.compile(r"/v1/files/?"), {"GET": "list_files", "POST": "upload_file"}),
    Endpoint(
        "/v1/files/{id}", re.compile(r"/v1/files/(?P<file_id>[^/]+)"), {"GET": "get_file", "DELETE": "delete_file"}
    ),
    Endpoint("/v1/files/{id}/content", re.compile(r"/v1/files/(?P<file_id>[^/]+)/content"), {"GET": "file_content"}),
    Endpoint(BATCHES_PATH, re.compile(r"/v1/batches/?"), {"GET": "list_batches", "POST": "create_batch"}),
    Endpoint("/v1/batches/{id}", re.compile(r"/v1/batches/(?P<batch_id>[^/]+)"), {"GET": "get_batch"}),
    Endpoint(
        "/v1/batches/{id}/cancel", re.compile(r"/v1/batches/(?P<batch_id>[^/]+)/cancel"), {"POST": "cancel_batch"}
    ),
)


def is_batch_path(path: str) -> bool:
    return path == FILES_PATH or path == BATCHES_PATH or path.startswith((FILES_PATH + "/", BATCHES_PATH + "/"))


def match_batch_endpoint(path: str) -> Optional[Tuple[Endpoint, Dict[str, str]]]:
    """The endpoint at `path` and the ids in it, or None."""
    return match_endpoint(BATCH_ENDPOINTS, path)

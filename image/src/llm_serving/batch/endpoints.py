"""The Batch API's route table, written once: batch/routes.py binds its handlers to it, and the
gateway labels its metrics by it and leaves these paths out of its model checks.

Imports nothing of ours, so the gateway can read it without loading the Batch layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

FILES_PATH = "/v1/files"
BATCHES_PATH = "/v1/batches"


@dataclass(frozen=True)
class BatchEndpoint:
    # The path with its ids as placeholders: the metrics' route label (ids would be unbounded).
    template: str
    pattern: re.Pattern
    # HTTP method -> the operation that answers it (a BatchRoutes handler of that name).
    operations: Mapping[str, str]


BATCH_ENDPOINTS: Tuple[BatchEndpoint, ...] = (
    BatchEndpoint(FILES_PATH, re.compile(r"/v1/files/?"), {"GET": "list_files", "POST": "upload_file"}),
    BatchEndpoint(
        "/v1/files/{id}", re.compile(r"/v1/files/(?P<file_id>[^/]+)"), {"GET": "get_file", "DELETE": "delete_file"}
    ),
    BatchEndpoint(
        "/v1/files/{id}/content", re.compile(r"/v1/files/(?P<file_id>[^/]+)/content"), {"GET": "file_content"}
    ),
    BatchEndpoint(BATCHES_PATH, re.compile(r"/v1/batches/?"), {"GET": "list_batches", "POST": "create_batch"}),
    BatchEndpoint("/v1/batches/{id}", re.compile(r"/v1/batches/(?P<batch_id>[^/]+)"), {"GET": "get_batch"}),
    BatchEndpoint(
        "/v1/batches/{id}/cancel", re.compile(r"/v1/batches/(?P<batch_id>[^/]+)/cancel"), {"POST": "cancel_batch"}
    ),
)


def is_batch_path(path: str) -> bool:
    return path == FILES_PATH or path == BATCHES_PATH or path.startswith((FILES_PATH + "/", BATCHES_PATH + "/"))


def match_batch_endpoint(path: str) -> Optional[Tuple[BatchEndpoint, Dict[str, str]]]:
    """The endpoint at `path` and the ids in it, or None."""
    for endpoint in BATCH_ENDPOINTS:
        match = endpoint.pattern.fullmatch(path)
        if match is not None:
            return endpoint, match.groupdict()
    return None

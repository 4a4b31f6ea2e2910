"""Files and batches in a store that outlives a gateway replica, through pyarrow.fs (the filesystem
abstraction Ray Data uses): a local directory (absolute path; on a cluster, a volume every Ray pod
mounts) or an object store (s3://bucket/prefix, gs://...).

Layout under the root:
    files/<id>.json                 the File record (OpenAI's fields + the owner key's name)
    files/<id>.jsonl                its content
    batches/<id>.json               the Batch record
    batches/<id>/results/<n>.jsonl  result lines as they come (output and error lines together);
                                    joined into the output and error files when the batch ends

Every object is written whole (locally to a temporary name, then renamed; on an object store one
put), so a reader never sees half a record. Result chunks make a run resumable on a store without
appends: the custom_ids in them are done.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Dict, Iterator, List, Optional, Tuple

from pyarrow import fs as pafs  # type: ignore[import-untyped]


class NotFound(KeyError):
    """No such object."""


class BatchStore:
    def __init__(self, uri: str):
        self.uri = uri
        if "://" not in uri:
            os.makedirs(uri, exist_ok=True)  # a local root that does not exist yet
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        for folder in ("files", "batches"):
            self.fs.create_dir(self._path(folder), recursive=True)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    # Whole-object reads and writes

    def write_bytes(self, relative: str, data: bytes) -> None:
        path = self._path(relative)
        if self.local:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            temporary = f"{path}.tmp-{secrets.token_hex(4)}"
            with self.fs.open_output_stream(temporary) as out:
                out.write(data)
            self.fs.move(temporary, path)  # rename: atomic on one filesystem
        else:
            with self.fs.open_output_stream(path) as out:  # one object, visible once complete
                out.write(data)

    def read_bytes(self, relative: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(relative)) as source:
                return source.read()
        except FileNotFoundError:
            raise NotFound(relative) from None

    def delete(self, relative: str) -> None:
        try:
            self.fs.delete_file(self._path(relative))
        except FileNotFoundError:
            pass

    def _names(self, relative: str, suffix: str) -> List[str]:
        selector = pafs.FileSelector(self._path(relative), allow_not_found=True)
        names = [info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return sorted(name[: -len(suffix)] for name in names if name.endswith(suffix) and ".tmp-" not in name)

    def _read_json(self, relative: str) -> Dict[str, Any]:
        return json.loads(self.read_bytes(relative))

    def _write_json(self, relative: str, record: Dict[str, Any]) -> None:
        self.write_bytes(relative, json.dumps(record).encode())

    # Files

    def put_file(self, record: Dict[str, Any], content: bytes) -> None:
        """Content first, then the record: a file is listed only once its content is whole."""
        self.write_bytes(f"files/{record['id']}.jsonl", content)
        self._write_json(f"files/{record['id']}.json", record)

    def file(self, file_id: str) -> Dict[str, Any]:
        return self._read_json(f"files/{_safe(file_id)}.json")

    def file_content(self, file_id: str) -> bytes:
        return self.read_bytes(f"files/{_safe(file_id)}.jsonl")

    def files(self) -> Iterator[Dict[str, Any]]:
        for file_id in self._names("files", ".json"):
            try:
                yield self.file(file_id)
            except NotFound:  # deleted meanwhile
                continue

    def delete_file(self, file_id: str) -> None:
        """Record first, so a half-done delete leaves no listed file without content."""
        self.delete(f"files/{_safe(file_id)}.json")
        self.delete(f"files/{_safe(file_id)}.jsonl")

    # Batches

    def put_batch(self, record: Dict[str, Any]) -> None:
        self._write_json(f"batches/{record['id']}.json", record)

    def batch(self, batch_id: str) -> Dict[str, Any]:
        return self._read_json(f"batches/{_safe(batch_id)}.json")

    def batches(self) -> Iterator[Dict[str, Any]]:
        for batch_id in self._names("batches", ".json"):
            try:
                yield self.batch(batch_id)
            except NotFound:
                continue

    # Results of a running batch

    def add_results(self, batch_id: str, sequence: int, lines: List[Dict[str, Any]]) -> None:
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self.write_bytes(f"batches/{batch_id}/results/{sequence:08d}.jsonl", body)

    def results(self, batch_id: str) -> Tuple[List[Dict[str, Any]], int]:
        """The result lines written so far, and the next chunk's sequence number."""
        names = self._names(f"batches/{batch_id}/results", ".jsonl")
        lines: List[Dict[str, Any]] = []
        for name in names:
            text = self.read_bytes(f"batches/{batch_id}/results/{name}.jsonl").decode()
            lines.extend(json.loads(raw) for raw in text.splitlines() if raw)
        return lines, (int(names[-1]) + 1 if names else 0)


def _safe(object_id: str) -> str:
    """An id as a path part: ids are ours (hex), so anything else cannot exist."""
    if not object_id or not all(c.isalnum() or c in "-_" for c in object_id):
        raise NotFound(object_id)
    return object_id


def owned(record: Optional[Dict[str, Any]], owner: str) -> bool:
    return record is not None and record.get("owner") == owner

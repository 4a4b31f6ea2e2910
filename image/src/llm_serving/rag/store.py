"""The vector store: pymilvus over a Milvus Lite file (the embedded default) or a Milvus server.

Milvus Lite is one process's file, so exactly one `RagStore` Serve replica opens it and every
gateway replica reaches the store through that replica's handle. With a server URI the store is
stateless and may have several replicas.

One Milvus collection per RAG collection. Each row is one chunk: its id is
`<document id>#<chunk index>`, so re-ingesting a document overwrites its chunks in place (upsert)
and then deletes the chunks past its new end: never a duplicate, and never a moment when the
document is missing. The collection's embedding model, dimension and chunking live in a collection
property, so they survive restarts with the data.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set

from llm_serving.config import RagConfig, RagStoreConfig

if TYPE_CHECKING:
    from pymilvus import MilvusClient
    from ray.serve import Application

COLLECTION_PROPERTY = "llm_serving.rag"
MAX_TEXT_BYTES = 65535  # Milvus VARCHAR limit for a chunk's text
MAX_ID_CHARS = 512
OUTPUT_FIELDS = ["document_id", "chunk_index", "text", "metadata"]


class StoreError(Exception):
    """A store operation refused for a reason the client can fix; becomes an HTTP 4xx."""

    def __init__(self, status: int, message: str, code: str, param: Optional[str] = None):
        super().__init__(status, message, code, param)  # all in args, so it pickles across Ray
        self.status, self.message, self.code, self.param = status, message, code, param

    def to_dict(self) -> Dict[str, Any]:
        return {"status": self.status, "message": self.message, "code": self.code, "param": self.param}


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    embedding_model: str
    dimension: int
    chunk_size: int
    chunk_overlap: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def chunk_id(document_id: str, chunk_index: int) -> str:
    return f"{document_id}#{chunk_index}"


def _quoted(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    return json.dumps(value)


def collection_not_found(name: str) -> StoreError:
    return StoreError(
        404,
        f"The collection `{name}` does not exist; create it with POST /v1/rag/collections.",
        "collection_not_found",
    )


class VectorStore:
    """Collections of embedded chunks in Milvus. Thread-safe: calls are serialized by a lock
    (Milvus Lite is one embedded process; a server connection gains little from parallel calls
    made by one replica)."""

    def __init__(self, client: MilvusClient, lite_path: Optional[str] = None):
        self._client = client
        self._lite_path = lite_path
        self._lock = threading.Lock()
        self._loaded: Set[str] = set()  # collections loaded for search and query by this client

    @classmethod
    def connect(cls, config: RagStoreConfig) -> VectorStore:
        from pymilvus import MilvusClient  # imported here: only the store replica needs it

        if config.is_lite:
            os.makedirs(os.path.dirname(config.uri), exist_ok=True)
            return cls(MilvusClient(config.uri), lite_path=config.uri)
        kwargs: Dict[str, Any] = {"uri": config.uri}
        for field, env in (("token", config.token_env), ("user", config.user_env), ("password", config.password_env)):
            if env:
                value = os.environ.get(env)
                if not value:
                    raise RuntimeError(
                        f"rag.store.{field}_env names {env}, which is not set; set it (e.g. from a Secret)"
                    )
                kwargs[field] = value
        if config.db_name:
            kwargs["db_name"] = config.db_name
        return cls(MilvusClient(**kwargs))

    def close(self) -> None:
        with self._lock:
            self._client.close()
            if self._lite_path is not None:
                # Stop the embedded Milvus Lite server now (it flushes and frees the file) rather
                # than at interpreter exit. milvus_lite's server manager is not its documented API
                # (pymilvus has no public call for this); it stays here, not in llm_serving._ray,
                # which is the door to Ray's internals, and tests/unit/test_rag_store.py runs it.
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_path)

    # Collections

    def _info(self, name: str) -> CollectionInfo:
        if not self._client.has_collection(name):
            raise collection_not_found(name)
        raw = self._client.describe_collection(name).get("properties", {}).get(COLLECTION_PROPERTY)
        if raw is None:
            raise StoreError(
                409,
                f"The Milvus collection `{name}` was not created by llm-serving; use another name.",
                "collection_foreign",
            )
        info = CollectionInfo(name=name, **json.loads(raw))
        if name not in self._loaded:
            # After a restart Milvus holds collections released (on disk, not searchable) until
            # loaded; loading a loaded collection is a no-op.
            self._client.load_collection(name)
            self._loaded.add(name)
        return info

    def get_collection(self, name: str) -> Dict[str, Any]:
        with self._lock:
            info = self._info(name)
            stats = self._client.get_collection_stats(name)
        return {**info.to_dict(), "chunks": int(stats.get("row_count", 0))}

    def list_collections(self) -> List[Dict[str, Any]]:
        with self._lock:
            names = sorted(self._client.list_collections())
        result = []
        for name in names:
            try:
                result.append(self.get_collection(name))
            except StoreError:
                continue  # not one of ours (a shared Milvus server)
        return result

    def create_collection(
        self, name: str, embedding_model: str, dimension: int, chunk_size: int, chunk_overlap: int
    ) -> Dict[str, Any]:
        from pymilvus import DataType, MilvusClient

        info = CollectionInfo(name, embedding_model, dimension, chunk_size, chunk_overlap)

        with self._lock:
            if self._client.has_collection(info.name):
                raise StoreError(
                    409,
                    f"The collection `{info.name}` already exists; delete it first or choose another name.",
                    "collection_exists",
                    "name",
                )
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_CHARS)
            schema.add_field("document_id", DataType.VARCHAR, max_length=MAX_ID_CHARS)
            schema.add_field("chunk_index", DataType.INT64)
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dimension)
            index = self._client.prepare_index_params()
            index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
            # Strong consistency: a search right after an ingestion sees it (a server's default,
            # Bounded, may not).
            self._client.create_collection(info.name, schema=schema, index_params=index, consistency_level="Strong")
            settings = {k: v for k, v in info.to_dict().items() if k != "name"}
            self._client.alter_collection_properties(info.name, properties={COLLECTION_PROPERTY: json.dumps(settings)})
            self._loaded.discard(info.name)
        return {**info.to_dict(), "chunks": 0}

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._info(name)
            self._client.drop_collection(name)
            self._loaded.discard(name)

    # Documents

    def replace_document(self, name: str, document_id: str, chunks: Sequence[Dict[str, Any]]) -> int:
        """Store a document's chunks (`text`, `vector`, `metadata`), replacing any earlier version."""
        with self._lock:
            info = self._info(name)
            for chunk in chunks:
                _check_dimension(info, chunk["vector"])
            rows = [
                {
                    "id": chunk_id(document_id, index),
                    "document_id": document_id,
                    "chunk_index": index,
                    "text": chunk["text"],
                    "metadata": chunk.get("metadata") or {},
                    "vector": list(chunk["vector"]),
                }
                for index, chunk in enumerate(chunks)
            ]
            if rows:
                self._client.upsert(name, rows)
            self._client.delete(name, filter=f"document_id == {_quoted(document_id)} and chunk_index >= {len(rows)}")
        return len(rows)

    def delete_document(self, name: str, document_id: str) -> int:
        with self._lock:
            self._info(name)
            existing = self._client.query(name, filter=f"document_id == {_quoted(document_id)}", output_fields=["id"])
            if not existing:
                raise StoreError(404, f"The collection `{name}` has no document `{document_id}`.", "document_not_found")
            self._client.delete(name, filter=f"document_id == {_quoted(document_id)}")
        return len(existing)

    def search(self, name: str, vectors: Sequence[Sequence[float]], top_k: int) -> List[List[Dict[str, Any]]]:
        """The `top_k` chunks nearest to each vector, best first, with cosine similarity as `score`."""
        with self._lock:
            info = self._info(name)
            for vector in vectors:
                _check_dimension(info, vector)
            results = self._client.search(
                name,
                data=[list(v) for v in vectors],
                limit=top_k,
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": "COSINE"},
            )
        return [
            [
                {
                    "id": hit["id"],
                    "document_id": hit["entity"]["document_id"],
                    "chunk_index": hit["entity"]["chunk_index"],
                    "text": hit["entity"]["text"],
                    "metadata": hit["entity"].get("metadata") or {},
                    "score": float(hit["distance"]),
                }
                for hit in hits
            ]
            for hits in results
        ]


def _check_dimension(info: CollectionInfo, vector: Sequence[float]) -> None:
    if len(vector) != info.dimension:
        raise StoreError(
            400,
            f"The embedding has {len(vector)} dimensions but collection `{info.name}` stores {info.dimension} "
            f"(embedding model `{info.embedding_model}`); send vectors of {info.dimension} dimensions.",
            "embedding_dimension_mismatch",
        )


class RagStore:
    """The Serve deployment that owns the store (one replica for a Milvus Lite file). Its methods
    return `{"result": ...}` or `{"error": {...}}`, so refusals cross Ray as plain data."""

    def __init__(self, store: Dict[str, Any]):
        self._store = VectorStore.connect(RagStoreConfig.model_validate(store))

    async def call(self, method: str, *args: Any) -> Dict[str, Any]:
        if method not in STORE_METHODS:
            raise ValueError(f"unknown store method {method!r}")
        try:
            return {"result": await asyncio.to_thread(getattr(self._store, method), *args)}
        except StoreError as error:
            return {"error": error.to_dict()}

    async def check_health(self) -> None:
        await asyncio.to_thread(self._store.list_collections)

    def __del__(self):
        try:
            self._store.close()
        except Exception:
            pass


STORE_METHODS = {
    "get_collection",
    "list_collections",
    "create_collection",
    "drop_collection",
    "replace_document",
    "delete_document",
    "search",
}


def build_rag_store_deployment(config: RagConfig) -> Application:
    """The RagStore Serve deployment: one replica for a Milvus Lite file (the only process that may
    open it), `store.replicas` for a Milvus server."""
    from ray import serve

    return serve.deployment(
        RagStore,
        name="RagStore",
        num_replicas=config.store.replicas,
        max_ongoing_requests=256,
        # Milvus calls wait on I/O or on the embedded Lite server; a fraction of a CPU is enough.
        ray_actor_options={"num_cpus": 0.25},
    ).bind(store=config.store.model_dump())

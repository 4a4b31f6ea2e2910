"""Ingestion and retrieval on top of the app's own embedding model and the RagStore deployment.

Runs in the gateway replicas. Requests are validated in full before anything is written, so a
refused request leaves the store as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray.serve.handle import DeploymentHandle

from llm_serving.config import RagConfig
from llm_serving.gateway.errors import GatewayError
from llm_serving.rag.chunking import chunk_text
from llm_serving.rag.store import StoreError

COLLECTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$"
DIMENSION_PROBE_TEXT = "dimension probe"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateCollectionRequest(_Request):
    name: str = Field(..., pattern=COLLECTION_NAME_PATTERN)
    embedding_model: Optional[str] = None
    dimension: Optional[int] = Field(None, ge=1)
    chunk_size: Optional[int] = Field(None, ge=32, le=8000)
    chunk_overlap: Optional[int] = Field(None, ge=0)


class DocumentIn(_Request):
    id: str = Field(..., pattern=DOCUMENT_ID_PATTERN)
    text: str
    metadata: Dict[str, Any] = Field(default_factory=dict)


class AddDocumentsRequest(_Request):
    documents: List[DocumentIn] = Field(..., min_length=1)

    @field_validator("documents")
    @classmethod
    def _unique_ids(cls, documents: List[DocumentIn]) -> List[DocumentIn]:
        seen = set()
        for document in documents:
            if document.id in seen:
                raise ValueError(f"document id {document.id!r} appears twice; send each document once")
            seen.add(document.id)
        return documents


class SearchRequest(_Request):
    query: Optional[str] = None
    vector: Optional[List[float]] = None
    top_k: Optional[int] = Field(None, ge=1)


class RagChatOptions(_Request):
    collection: str
    top_k: Optional[int] = Field(None, ge=1)


_RequestT = TypeVar("_RequestT", bound=_Request)


def parse_request(model: Type[_RequestT], payload: Any) -> _RequestT:
    """Validate a request body into `model`, or a 400 naming the bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join(str(part) for part in item["loc"]) or "body"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        raise GatewayError(400, f"Invalid request: {where}: {message}.", code="invalid_request", param=where) from None


def _bad_request(message: str, code: str, param: Optional[str] = None) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


class RagService:
    def __init__(self, config: RagConfig, embedders: Dict[str, DeploymentHandle], store: DeploymentHandle):
        self.config = config
        self._embedders = {name: handle.options(stream=True) for name, handle in embedders.items()}
        self._store = store

    # Plumbing

    async def store(self, method: str, *args: Any) -> Any:
        reply = await self._store.call.remote(method, *args)
        if "error" in reply:
            error = StoreError(**reply["error"])
            raise GatewayError(error.status, error.message, code=error.code, param=error.param)
        return reply["result"]

    async def embed(self, model: str, texts: Sequence[str]) -> List[List[float]]:
        """Embeddings of `texts` from the app's own `model`, in batches sent concurrently."""
        from llm_serving._ray import EmbeddingCompletionRequest, ErrorResponse

        handle = self._embedders.get(model)
        if handle is None:
            raise _bad_request(
                f"`{model}` is not an embedding model of this app; use one of: {', '.join(sorted(self._embedders))}.",
                "invalid_embedding_model",
                "embedding_model",
            )

        async def one_batch(batch: Sequence[str]) -> List[List[float]]:
            request = EmbeddingCompletionRequest(model=model, input=list(batch))
            async for response in handle.embeddings.remote(request, None):
                if isinstance(response, list):
                    response = response[0]
                if isinstance(response, ErrorResponse):
                    status = response.error.code if 400 <= response.error.code < 500 else 502
                    raise GatewayError(
                        status,
                        f"The embedding model `{model}` refused the input: {response.error.message} "
                        "(lower the collection's chunk_size if the chunks are too long for it).",
                        code="embedding_failed",
                    )
                ordered = sorted(response.data, key=lambda item: item.index)
                return [list(item.embedding) for item in ordered]
            raise GatewayError(502, f"The embedding model `{model}` returned nothing.", code="embedding_failed")

        size = self.config.embed_batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        results = await asyncio.gather(*(one_batch(batch) for batch in batches))
        return [vector for batch in results for vector in batch]

    def embedding_model_for_new_collection(self, requested: Optional[str]) -> str:
        if requested is not None:
            return requested
        if self.config.default_embedding_model is not None:
            return self.config.default_embedding_model
        if len(self._embedders) == 1:
            return next(iter(self._embedders))
        raise _bad_request(
            "Several embedding models are served; "
            f"set `embedding_model` to one of: {', '.join(sorted(self._embedders))}.",
            "missing_embedding_model",
            "embedding_model",
        )

    # Operations

    async def create_collection(self, request: CreateCollectionRequest, embedding_model: str) -> Dict[str, Any]:
        chunk_size = request.chunk_size or self.config.chunk_size
        chunk_overlap = self.config.chunk_overlap if request.chunk_overlap is None else request.chunk_overlap
        if request.chunk_size is not None and request.chunk_overlap is None:
            chunk_overlap = min(chunk_overlap, chunk_size // 4)
        if chunk_overlap >= chunk_size:
            raise _bad_request(
                f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size}).",
                "invalid_chunking",
                "chunk_overlap",
            )
        (probe,) = await self.embed(embedding_model, [DIMENSION_PROBE_TEXT])
        if request.dimension is not None and request.dimension != len(probe):
            raise _bad_request(
                f"`dimension` is {request.dimension} but `{embedding_model}` makes embeddings of {len(probe)} "
                "dimensions; omit `dimension` or set it to that.",
                "embedding_dimension_mismatch",
                "dimension",
            )
        return await self.store(
            "create_collection", request.name, embedding_model, len(probe), chunk_size, chunk_overlap
        )

    def chunk_documents(self, collection: Dict[str, Any], documents: Sequence[DocumentIn]) -> List[List[str]]:
        """Each document's chunks, or a 400 for the first empty or oversized document."""
        limit = self.config.max_documents_per_request
        if len(documents) > limit:
            raise _bad_request(
                f"{len(documents)} documents in one request; send at most {limit} (rag.max_documents_per_request).",
                "too_many_documents",
                "documents",
            )
        chunked = []
        for position, document in enumerate(documents):
            param = f"documents.{position}.text"
            if not document.text.strip():
                raise _bad_request(
                    f"Document `{document.id}` has no text; send non-empty text.", "empty_document", param
                )
            if len(document.text) > self.config.max_document_chars:
                raise _bad_request(
                    f"Document `{document.id}` has {len(document.text)} characters; the limit is "
                    f"{self.config.max_document_chars} (rag.max_document_chars). Split it into several documents.",
                    "document_too_large",
                    param,
                )
            chunked.append(chunk_text(document.text, collection["chunk_size"], collection["chunk_overlap"]))
        return chunked

    async def add_documents(self, collection: Dict[str, Any], documents: Sequence[DocumentIn]) -> List[Dict[str, Any]]:
        chunked = self.chunk_documents(collection, documents)
        texts = [text for chunks in chunked for text in chunks]
        vectors = iter(await self.embed(collection["embedding_model"], texts))
        stored = []
        for document, chunks in zip(documents, chunked, strict=True):  # one list of chunks per document
            rows = [{"text": text, "vector": next(vectors), "metadata": document.metadata} for text in chunks]
            count = await self.store("replace_document", collection["name"], document.id, rows)
            stored.append({"id": document.id, "chunks": count})
        return stored

    def top_k(self, requested: Optional[int]) -> int:
        top_k = requested or self.config.default_top_k
        if top_k > self.config.max_top_k:
            raise _bad_request(
                f"top_k is {top_k}; the limit is {self.config.max_top_k} (rag.max_top_k).", "invalid_top_k", "top_k"
            )
        return top_k

    async def search(
        self, collection: Dict[str, Any], query: Optional[str], vector: Optional[List[float]], top_k: int
    ) -> List[Dict[str, Any]]:
        if (query is None) == (vector is None):
            raise _bad_request(
                "Send exactly one of `query` (text) and `vector` (an embedding).", "invalid_request", "query"
            )
        if query is not None:
            if not query.strip():
                raise _bad_request("`query` is empty.", "invalid_request", "query")
            (vector,) = await self.embed(collection["embedding_model"], [query])
        (hits,) = await self.store("search", collection["name"], [vector], top_k)
        return hits

"""Retrieval-augmented generation inside the serving app: ingest, embed, retrieve, generate.

- chunking.py, prompt.py: pure functions (how documents are cut, how the prompt is built).
- store.py: the vector store (pymilvus; Milvus Lite file or a Milvus server) and the Serve
  deployment that owns it.
- service.py: ingestion and retrieval on top of the app's own embedding model.
- routes.py: the HTTP layer (/v1/rag/... and `rag` on chat completions) inside the gateway.
"""

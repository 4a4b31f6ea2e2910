"""VectorStore on a real Milvus Lite file: stable chunk ids, replacement, deletes, dimension checks,
and data that outlives the process's connection."""

import pytest

from llm_serving.config import RagStoreConfig
from llm_serving.rag.store import StoreError, VectorStore


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("store") / "milvus.db")


@pytest.fixture(scope="module")
def connected(db_path):
    # One embedded Milvus Lite server for the module (each start costs about two seconds).
    store = VectorStore.connect(RagStoreConfig(uri=db_path))
    yield store
    store.close()


@pytest.fixture
def store(connected):
    for collection in connected.list_collections():
        connected.drop_collection(collection["name"])
    connected.create_collection("docs", "test-model", 3, 100, 10)
    return connected


def rows(*vectors, metadata=None):
    return [{"text": f"chunk {i}", "vector": v, "metadata": metadata or {}} for i, v in enumerate(vectors)]


def test_collection_keeps_its_settings(store):
    assert store.get_collection("docs") == {
        "name": "docs", "embedding_model": "test-model", "dimension": 3, "chunk_size": 100, "chunk_overlap": 10,
        "chunks": 0,
    }
    assert [c["name"] for c in store.list_collections()] == ["docs"]


def test_duplicate_and_unknown_collections_are_refused(store):
    with pytest.raises(StoreError) as exists:
        store.create_collection("docs", "test-model", 3, 100, 10)
    assert (exists.value.status, exists.value.code) == (409, "collection_exists")
    for operation in (lambda: store.get_collection("nope"), lambda: store.search("nope", [[1, 0, 0]], 1),
                      lambda: store.drop_collection("nope")):
        with pytest.raises(StoreError) as missing:
            operation()
        assert (missing.value.status, missing.value.code) == (404, "collection_not_found")


def test_reingesting_a_document_replaces_its_chunks(store):
    assert store.replace_document("docs", "a", rows([1, 0, 0], [0, 1, 0], [0, 0, 1])) == 3
    assert store.replace_document("docs", "a", rows([1, 0, 0], [0, 1, 0], metadata={"v": 2})) == 2
    assert store.get_collection("docs")["chunks"] == 2
    hits = store.search("docs", [[0, 0, 1]], 10)[0]
    assert sorted(hit["id"] for hit in hits) == ["a#0", "a#1"]
    assert all(hit["metadata"] == {"v": 2} for hit in hits)


def test_search_ranks_by_cosine_similarity(store):
    store.replace_document("docs", "x", rows([1, 0, 0]))
    store.replace_document("docs", "y", rows([0.7, 0.7, 0]))
    store.replace_document("docs", "z", rows([0, 0, 1]))
    hits = store.search("docs", [[1, 0.1, 0]], 2)[0]
    assert [hit["document_id"] for hit in hits] == ["x", "y"]
    assert hits[0]["score"] > hits[1]["score"] > 0


def test_wrong_dimension_is_refused_and_nothing_is_written(store):
    with pytest.raises(StoreError) as error:
        store.replace_document("docs", "a", rows([1, 0, 0], [1, 0]))
    assert (error.value.status, error.value.code) == (400, "embedding_dimension_mismatch")
    assert "stores 3" in error.value.message
    assert store.get_collection("docs")["chunks"] == 0
    with pytest.raises(StoreError):
        store.search("docs", [[1, 0, 0, 0]], 1)


def test_delete_document_removes_only_its_chunks(store):
    store.replace_document("docs", "a", rows([1, 0, 0], [0, 1, 0]))
    store.replace_document("docs", "a-2", rows([1, 0, 0]))
    assert store.delete_document("docs", "a") == 2
    assert [hit["id"] for hit in store.search("docs", [[1, 0, 0]], 10)[0]] == ["a-2#0"]
    with pytest.raises(StoreError) as error:
        store.delete_document("docs", "a")
    assert (error.value.status, error.value.code) == (404, "document_not_found")


def test_data_survives_reopening_the_file(tmp_path):
    path = str(tmp_path / "reopened.db")
    first = VectorStore.connect(RagStoreConfig(uri=path))
    first.create_collection("docs", "test-model", 3, 100, 10)
    first.replace_document("docs", "kept", rows([0, 1, 0]))
    first.close()
    reopened = VectorStore.connect(RagStoreConfig(uri=path))
    try:
        assert reopened.get_collection("docs")["chunks"] == 1
        assert reopened.search("docs", [[0, 1, 0]], 1)[0][0]["id"] == "kept#0"
    finally:
        reopened.close()


def test_store_errors_cross_process_boundaries_intact():
    import pickle

    error = pickle.loads(pickle.dumps(StoreError(404, "gone", "collection_not_found", "name")))
    assert error.to_dict() == {"status": 404, "message": "gone", "code": "collection_not_found", "param": "name"}

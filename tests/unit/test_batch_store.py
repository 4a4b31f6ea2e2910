"""The Batch API's store (llm_serving.batch.store) on a local directory: whole-object writes,
listing, deletes, result chunks in order, and ids that cannot escape the store."""

import pytest

from llm_serving.batch.formats import batch_object, file_object
from llm_serving.batch.store import BatchStore, NotFound


def test_files_round_trip_and_leave_no_temporary_objects(tmp_path):
    store = BatchStore(str(tmp_path / "store"))
    record = file_object("file-abc", 3, "in.jsonl", "batch", owner="team-a")
    store.put_file(record, b"{}\n")
    assert store.file("file-abc") == record and store.file_content("file-abc") == b"{}\n"
    assert [f["id"] for f in store.files()] == ["file-abc"]
    assert sorted(p.name for p in (tmp_path / "store" / "files").iterdir()) == ["file-abc.json", "file-abc.jsonl"]
    store.delete_file("file-abc")
    with pytest.raises(NotFound):
        store.file("file-abc")
    assert list(store.files()) == []


def test_a_second_store_on_the_same_root_sees_the_records(tmp_path):
    # A restarted gateway or runner opens the same root.
    BatchStore(str(tmp_path)).put_batch(batch_object("batch_1", "/v1/embeddings", "file-1", "a", None, None))
    assert BatchStore(str(tmp_path)).batch("batch_1")["status"] == "validating"


def test_result_chunks_come_back_in_order_with_the_next_sequence(tmp_path):
    store = BatchStore(str(tmp_path))
    assert store.results("batch_1") == ([], 0)
    store.add_results("batch_1", 0, [{"custom_id": "a"}, {"custom_id": "b"}])
    store.add_results("batch_1", 1, [{"custom_id": "c"}])
    lines, next_sequence = store.results("batch_1")
    assert [x["custom_id"] for x in lines] == ["a", "b", "c"] and next_sequence == 2


@pytest.mark.parametrize("bad_id", ["../files/x", "a/b", "", "x.json"])
def test_ids_that_are_not_ours_are_not_found(tmp_path, bad_id):
    store = BatchStore(str(tmp_path))
    with pytest.raises(NotFound):
        store.file(bad_id)
    with pytest.raises(NotFound):
        store.batch(bad_id)

"""The retrieval-augmented prompt: which text is searched for and where the sources go."""

from llm_serving.config import DEFAULT_RAG_INSTRUCTIONS
from llm_serving.rag.prompt import (
    build_rag_messages,
    capped_sources,
    format_sources,
    numbered_sources,
    rag_messages,
    retrieval_query,
    source_lines,
)


def test_query_is_the_last_user_message():
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "question"}]},
    ]
    assert retrieval_query(messages) == "second\nquestion"


def test_no_user_text_means_no_query():
    assert retrieval_query([{"role": "system", "content": "be brief"}]) is None
    assert retrieval_query([{"role": "user", "content": "   "}]) is None
    assert retrieval_query([]) is None


def test_sources_are_numbered_in_rank_order():
    assert format_sources(["alpha", "beta"], 1000) == ("[1] alpha\n[2] beta", 2)


def test_sources_stop_at_the_character_budget_with_whole_sources():
    texts = ["a" * 40, "b" * 40, "c" * 40]
    formatted, used = format_sources(texts, 100)
    assert used == 2 and formatted == f"[1] {'a' * 40}\n[2] {'b' * 40}"
    assert len(formatted) <= 100


def test_first_source_is_truncated_rather_than_dropped():
    formatted, used = format_sources(["x" * 500, "y"], 50)
    assert used == 1 and formatted == ("[1] " + "x" * 500)[:50]


def test_sources_go_into_a_new_leading_system_message():
    messages = [{"role": "user", "content": "What is Milvus?"}]
    built, used = build_rag_messages(messages, ["Milvus is a vector database."])
    assert used == 1
    assert built[1:] == messages
    assert built[0] == {
        "role": "system",
        "content": f"{DEFAULT_RAG_INSTRUCTIONS}\n\nSources:\n[1] Milvus is a vector database.",
    }


def test_existing_system_message_is_kept_first_and_extended():
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Q"}]
    built, _ = build_rag_messages(messages, ["fact"], instructions="Use the sources.")
    assert built == [
        {"role": "system", "content": "Answer in French.\n\nUse the sources.\n\nSources:\n[1] fact"},
        {"role": "user", "content": "Q"},
    ]
    assert messages[0]["content"] == "Answer in French."  # the caller's list is not modified


def test_context_budget_limits_the_sources_cited():
    built, used = build_rag_messages([{"role": "user", "content": "Q"}], ["a" * 60, "b" * 60], max_context_chars=100)
    assert used == 1
    assert "b" * 60 not in built[0]["content"]


def test_capped_sources_are_the_texts_behind_the_numbered_lines():
    texts = ["a" * 40, "b" * 40, "c" * 40]
    assert capped_sources(texts, 100) == texts[:2]
    assert numbered_sources(capped_sources(texts, 100)) == source_lines(texts, 100) == [f"[1] {'a' * 40}", f"[2] {'b' * 40}"]
    assert capped_sources(["x" * 500], 50) == ["x" * 46]  # "[1] " + 46 characters


def test_rag_messages_without_sources_keep_the_instructions_and_header():
    built = rag_messages([{"role": "user", "content": "Q"}], [], instructions="Use the sources.")
    assert built[0] == {"role": "system", "content": "Use the sources.\n\nSources:\n"}

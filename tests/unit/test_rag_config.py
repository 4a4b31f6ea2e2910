"""The `rag:` block of AppConfig: store options and the rules that name the fix."""

import pytest

from llm_serving.app import uses_direct_streaming
from llm_serving.config import ConfigError, parse_app_config


def with_rag(rag, models=None):
    models = models or {"chat": {"source": "org/chat"}, "embed": {"source": "org/embed", "task": "embed"}}
    return {"models": models, "gateway": {"auth": {"mode": "none"}}, "rag": rag}


def test_lite_file_is_the_embedded_default_with_one_replica():
    config = parse_app_config(with_rag({"store": {"uri": "/data/rag/milvus.db"}}))
    assert config.rag.store.is_lite and config.rag.store.replicas == 1
    assert (config.rag.chunk_size, config.rag.chunk_overlap, config.rag.default_top_k) == (800, 100, 4)


def test_server_uri_takes_credentials_from_the_environment_and_may_scale():
    config = parse_app_config(with_rag({"store": {"uri": "http://milvus:19530", "token_env": "MILVUS_TOKEN", "replicas": 3}}))
    assert not config.rag.store.is_lite
    assert config.rag.store.token_env == "MILVUS_TOKEN" and config.rag.store.replicas == 3


@pytest.mark.parametrize(
    "rag, models, expected",
    [
        ({"store": {"uri": "milvus.db"}}, None, r"absolute Milvus Lite file path ending in \.db"),
        ({"store": {"uri": "/data/milvus.db", "replicas": 2}}, None, r"replicas must be 1 with a Milvus Lite file"),
        ({"store": {"uri": "/data/milvus.db", "token_env": "T"}}, None, r"credentials and db_name apply to a Milvus server"),
        ({"store": {"uri": "/d/m.db"}, "chunk_size": 100, "chunk_overlap": 100}, None, r"chunk_overlap must be smaller"),
        ({"store": {"uri": "/d/m.db"}, "chunk_sise": 100}, None, r"args\.rag\.chunk_sise: unknown key"),
        ({"store": {"uri": "/d/m.db"}}, {"chat": {"source": "org/chat"}}, r"rag needs an embedding model"),
        ({"store": {"uri": "/d/m.db"}, "default_embedding_model": "chat"}, None, r"not a model with task: embed; choose one of: embed"),
    ],
)
def test_invalid_rag_config_names_the_key_and_the_fix(rag, models, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config(with_rag(rag, models))


def test_rag_always_uses_the_gateway_topology(monkeypatch):
    monkeypatch.setattr("llm_serving.app.RAY_SERVE_ENABLE_HA_PROXY", True)
    models = {"embed": {"source": "org/embed", "task": "embed"}}
    assert uses_direct_streaming(parse_app_config(with_rag(None, models) | {"rag": None}))
    assert not uses_direct_streaming(parse_app_config(with_rag({"store": {"uri": "/d/m.db"}}, models)))

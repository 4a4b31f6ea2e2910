"""API keys: parsing the keys document, hashing, lookup and the errors for bad sources."""

import hashlib

import pytest

from llm_serving.config import ApiKeysConfig
from llm_serving.gateway.api_keys import ApiKeyStore, KeysFileError, bearer_token, parse_keys_document

KEYS = """
keys:
  - name: team-a
    key: sk-team-a-0123456789abcdef
  - name: embed-only
    sha256: {digest}
    models: [minilm]
""".format(digest=hashlib.sha256(b"sk-embed-only-0123456789").hexdigest())


def test_keys_are_held_hashed_and_looked_up_by_digest():
    store = ApiKeyStore(parse_keys_document(KEYS, "test"))
    assert store.authenticate("sk-team-a-0123456789abcdef").name == "team-a"
    restricted = store.authenticate("sk-embed-only-0123456789")
    assert restricted.name == "embed-only"
    assert restricted.may_use("minilm") and not restricted.may_use("chat")
    assert store.authenticate("sk-team-a-0123456789abcdeX") is None
    assert all(b"sk-team-a" not in key.digest for key in store._keys)


def test_keys_from_file_and_environment_are_combined(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys: [{name: from-file, key: sk-from-file-000000000}]")
    monkeypatch.setenv("TEST_KEYS", '{"keys": [{"name": "from-env", "key": "sk-from-env-0000000000"}]}')
    store = ApiKeyStore.from_config(ApiKeysConfig(file=str(keys_file), env="TEST_KEYS"))
    assert store.authenticate("sk-from-file-000000000").name == "from-file"
    assert store.authenticate("sk-from-env-0000000000").name == "from-env"


@pytest.mark.parametrize(
    "document, expected",
    [
        ("keys: [{name: a}]", "needs exactly one of `key` or `sha256`"),
        ("keys: [{name: a, key: short}]", "at least 16 characters"),
        ("keys: [{name: a, sha256: nothex}]", "String should match pattern"),
        ("keys: [{name: a, key: sk-aaaaaaaaaaaaaaaa, colour: red}]", "Extra inputs are not permitted"),
        ("keys: [{name: a, key: sk-aaaaaaaaaaaaaaaa}, {name: a, key: sk-bbbbbbbbbbbbbbbb}]", "names must be unique"),
        ("keys: [", "not valid YAML/JSON"),
    ],
)
def test_malformed_documents_are_refused_with_the_reason(document, expected):
    with pytest.raises(KeysFileError, match=expected):
        parse_keys_document(document, "test")


def test_missing_sources_say_how_to_fix_them(tmp_path, monkeypatch):
    with pytest.raises(KeysFileError, match="does not exist; mount the Secret there"):
        ApiKeyStore.from_config(ApiKeysConfig(file=str(tmp_path / "absent.yaml")))
    monkeypatch.delenv("ABSENT_KEYS", raising=False)
    with pytest.raises(KeysFileError, match="ABSENT_KEYS is not set"):
        ApiKeyStore.from_config(ApiKeysConfig(env="ABSENT_KEYS"))


@pytest.mark.parametrize(
    "header, token",
    [("Bearer sk-1", "sk-1"), ("bearer   sk-1 ", "sk-1"), ("Basic abc", None), ("Bearer", None), (None, None)],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token

"""API keys: read from a mounted Secret file or an environment variable, held only as SHA-256.

A keys document (YAML or JSON):

    keys:
      - name: team-a            # shows up in logs and metrics, never the key itself
        key: sk-...             # or `sha256: <hex digest of the key>` to keep plaintext out of the Secret
        models: [chat, embed]   # optional: the only models this key may call
                                # `chat` allows chat's LoRA adapters too; `chat:adapter` only that adapter
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, List, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llm_serving.config import ApiKeysConfig


class KeysFileError(ValueError):
    """The keys document is missing or malformed; the message says which source and what to fix."""


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1)
    key: Optional[str] = Field(None, min_length=16)
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    models: Optional[List[str]] = None

    @model_validator(mode="after")
    def _one_secret(self) -> _KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"key {self.name!r} needs exactly one of `key` or `sha256`")
        return self


class _KeysDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: List[_KeyEntry]


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    allowed_models: Optional[FrozenSet[str]]  # None: every model

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def may_use_adapter(self, model: str, adapter: str) -> bool:
        """A LoRA adapter (`<model>:<adapter>`): allowed by the model's own entry (an adapter is a
        variant of the model the key was given) or by an entry naming that adapter."""
        return self.may_use(model) or self.may_use(f"{model}:{adapter}")


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_keys_document(text: str, source: str) -> List[ApiKey]:
    try:
        raw = yaml.safe_load(text)
        document = _KeysDocument.model_validate(raw)
    except yaml.YAMLError as error:
        raise KeysFileError(f"{source}: not valid YAML/JSON ({error})") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
        )
        raise KeysFileError(f"{source}: {problems} (expected `keys: [{{name, key|sha256, models?}}]`)") from None
    keys = []
    for entry in document.keys:
        if entry.key is not None:
            key_digest = digest(entry.key)
        else:
            assert entry.sha256 is not None  # _one_secret: exactly one of the two
            key_digest = bytes.fromhex(entry.sha256)
        allowed = frozenset(entry.models) if entry.models is not None else None
        keys.append(ApiKey(name=entry.name, digest=key_digest, allowed_models=allowed))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise KeysFileError(f"{source}: key names must be unique, got {names}")
    return keys


class ApiKeyStore:
    """Looks a presented key up by comparing its digest to every stored digest in constant time."""

    def __init__(self, keys: List[ApiKey]):
        self._keys = list(keys)

    @classmethod
    def from_config(cls, config: ApiKeysConfig) -> ApiKeyStore:
        keys: List[ApiKey] = []
        if config.file:
            path = Path(config.file)
            if not path.is_file():
                raise KeysFileError(
                    f"keys file {path} does not exist; mount the Secret there or fix auth.api_keys.file"
                )
            keys += parse_keys_document(path.read_text(), f"keys file {path}")
        if config.env:
            text = os.environ.get(config.env)
            if text is None:
                raise KeysFileError(
                    f"environment variable {config.env} is not set; "
                    "set it (e.g. from a Secret) or fix auth.api_keys.env"
                )
            keys += parse_keys_document(text, f"environment variable {config.env}")
        if not keys:
            raise KeysFileError("no API keys configured; add keys or set auth.mode: none")
        return cls(keys)

    @property
    def keys(self) -> List[ApiKey]:
        return list(self._keys)

    def replace_keys(self, keys: List[ApiKey]) -> None:
        """Swap in a re-read keys document (live reconfiguration); one assignment, so a request
        sees either the old keys or the new ones."""
        self._keys = list(keys)

    def authenticate(self, presented: str) -> Optional[ApiKey]:
        presented_digest = digest(presented)
        match = None
        # No early exit: the time taken does not depend on which key (if any) matched.
        for key in self._keys:
            if hmac.compare_digest(presented_digest, key.digest):
                match = key
        return match


_BEARER = re.compile(r"^Bearer\s+(\S+)\s*$", re.IGNORECASE)


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    if not authorization:
        return None
    found = _BEARER.match(authorization)
    return found.group(1) if found else None

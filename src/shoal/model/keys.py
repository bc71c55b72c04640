"""WireGuard (X25519) keys as typed values.

A `PrivateKey` never prints its material (repr is redacted) and is only ever written to the
host's state dir with mode 0600; the server only sees `PublicKey`s.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

KEY_LEN = 32


class InvalidKey(ValueError):
    """Text that is not a base64-encoded 32-byte WireGuard key."""


def _decode(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey("not base64") from exc
    if len(raw) != KEY_LEN:
        raise InvalidKey(f"key must be {KEY_LEN} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        return cls(_decode(text))

    def __str__(self) -> str:
        return base64.b64encode(self.raw).decode()

    def hex(self) -> str:
        return self.raw.hex()

    def short(self) -> str:
        return str(self)[:8]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # On the wire a key is its base64 text, exactly as `wg` prints it.
        from_text = core_schema.no_info_after_validator_function(
            cls._from_wire, core_schema.str_schema()
        )
        return core_schema.json_or_python_schema(
            json_schema=from_text,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(cls), from_text]
            ),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def _from_wire(cls, text: str) -> PublicKey:
        try:
            return cls.parse(text)
        except InvalidKey as exc:
            raise ValueError(f"invalid WireGuard public key: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PrivateKey:
    raw: bytes

    @classmethod
    def generate(cls) -> PrivateKey:
        key = X25519PrivateKey.generate()
        return cls(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )

    @classmethod
    def parse(cls, text: str) -> PrivateKey:
        return cls(_decode(text))

    def public_key(self) -> PublicKey:
        key = X25519PrivateKey.from_private_bytes(self.raw)
        return PublicKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def hex(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return "PrivateKey(<redacted>)"

    __str__ = __repr__

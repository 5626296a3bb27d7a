"""The deterministic id rule: uuid5(namespace, template.format(user_id, file_sha256)). No I/O."""

from __future__ import annotations

import hashlib
import string
import uuid
from dataclasses import dataclass
from typing import Literal

#: version nibble 4 and RFC 4122 variant, lower-case text form (ids are compared as text in SQL)
UUID_V4_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
UUID_V5_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

TemplatePart = tuple[Literal["literal", "field"], str]


@dataclass(frozen=True)
class IdRule:
    """How the application derives a document id from its owner and content."""

    namespace: uuid.UUID
    template: str

    def name_for(self, user_id: object, file_sha256: object) -> str:
        return self.template.format(user_id=user_id, file_sha256=file_sha256)

    def new_id(self, user_id: object, file_sha256: object) -> uuid.UUID:
        return uuid.uuid5(self.namespace, self.name_for(user_id, file_sha256))

    def new_id_text(self, user_id: object, file_sha256: object) -> str:
        """The same id as new_id, as text, about three times faster: for ids in bulk.

        RFC 4122 §4.3: the first 16 bytes of SHA-1(namespace + name), version 5, RFC variant.
        """
        digest = bytearray(
            hashlib.sha1(
                self.namespace.bytes + self.name_for(user_id, file_sha256).encode(),
                usedforsecurity=False,
            ).digest()[:16]
        )
        digest[6] = (digest[6] & 0x0F) | 0x50
        digest[8] = (digest[8] & 0x3F) | 0x80
        x = digest.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"

    def parts(self) -> list[TemplatePart]:
        """The template as literal text and field names, for building the same string in SQL."""
        out: list[TemplatePart] = []
        for literal, field, _spec, _conv in string.Formatter().parse(self.template):
            if literal:
                out.append(("literal", literal))
            if field is not None:
                out.append(("field", field))
        return out

"""Seeds derived from names: the same parts give the same seed in every process and on every rank."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts`` (joined with ``/``, hashed with SHA-256)."""
    key = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF

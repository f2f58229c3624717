"""Recently verified agent credentials, so hot paths skip the database."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["CredentialCache"]


class CredentialCache:
    """Recently verified node credential hashes, trusted for ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float = 5.0) -> None:
        self._ttl_s = ttl_s
        self._hashes: dict[str, tuple[str, float]] = {}

    def matches(self, node: str, credential: str, now: float) -> bool:
        """Tell whether ``credential`` is node's, as recently verified."""
        entry = self._hashes.get(node)
        if entry is None or now - entry[1] > self._ttl_s:
            return False
        digest = hashlib.sha256(credential.encode("utf-8")).hexdigest()
        return hmac.compare_digest(entry[0], digest)

    def remember(self, node: str, credential_hash: str, now: float) -> None:
        """Record a credential hash just read from the store."""
        self._hashes[node] = (credential_hash, now)

    def forget(self, node: str) -> None:
        """Drop what is cached for ``node`` (its credential was revoked)."""
        self._hashes.pop(node, None)

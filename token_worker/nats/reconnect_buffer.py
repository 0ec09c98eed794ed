"""The reconnect buffer: what is published while reconnecting, held for the next server.

As in nats.go, a short outage should not lose a reply that was finished during it: the
bytes wait here (up to ``nats.reconnectBufSize``) and go out, in one write, after the
subscriptions are re-created. Not thread-safe on its own: the connection calls it with
its send lock held.
"""

from __future__ import annotations

from token_worker.errors import NotConnected


class PendingWrites:
    """A bounded list of protocol writes, each with the largest message it holds (so a
    server with a smaller ``max_payload`` than the last one is never sent one too big)."""

    __slots__ = ("_size", "_writes", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._writes: list[tuple[bytes, int]] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._size

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, data: bytes, largest_message: int) -> None:
        """Hold ``data``, or raise :class:`NotConnected` when it does not fit."""
        if self._size + len(data) > self.limit:
            raise NotConnected(f"not connected, and the reconnect buffer ({self.limit} bytes) "
                               "is full")
        self._writes.append((data, largest_message))
        self._size += len(data)

    def take(self, max_payload: int) -> tuple[bytes, int, int]:
        """Empty the buffer: the writes that fit ``max_payload`` joined in one ``bytes``,
        how many writes that is, and how many were dropped as too large for this server."""
        writes, self._writes, self._size = self._writes, [], 0
        kept = [data for data, largest in writes if largest <= max_payload]
        return b"".join(kept), len(kept), len(writes) - len(kept)

    def discard(self) -> tuple[int, int]:
        """Empty the buffer without sending; return (writes, bytes) lost."""
        lost = (len(self._writes), self._size)
        self._writes, self._size = [], 0
        return lost

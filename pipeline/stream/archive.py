"""The worker's archive (``pipeline.rules.meter.Archive``) in its partition's on-disk store.

With ``METERING_STATE_STORE=rocksdb`` a final conversation (its dedupe ids and horizon) and
every alert id leave the ``Meter``'s memory for the partition's RocksDB store, written through
the store like any state change: pending until the batch's transaction commits, in the
changelog, restored with the rest. Keys, after the partition prefix ``<p><RS>``:

- ``z<US><meter key>``: ``(expires, conversation wire)`` for a conversation, ``(expires, t)`` for an alert;
- ``x<US><expires, 16 digits><US><meter key>``: an empty value, the index that expiry walks in order.

Only the ``c``/``a`` keys of conversations in memory and the clock are read at assignment; an
archived entry is read when an event of its conversation (or a copy of its alert) arrives.
"""

from __future__ import annotations

from typing import Final

import msgspec

from pipeline.rules.meter import ConversationState, ConversationWire
from pipeline.runtime.state import PartitionStore

US: Final = "\x1f"

_encode = msgspec.msgpack.Encoder().encode
_decode_conversation = msgspec.msgpack.Decoder(tuple[int, ConversationWire]).decode
_decode_expires = msgspec.msgpack.Decoder(tuple[int, msgspec.Raw]).decode


class StoreArchive:
    """A ``Meter`` archive over one partition's ``PartitionStore`` (read-your-writes within a batch)."""

    def __init__(self, store: PartitionStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self._index = f"{prefix}x{US}".encode()

    def _key(self, key: str) -> bytes:
        return f"{self.prefix}z{US}{key}".encode()

    def _index_key(self, expires: int, key: str) -> bytes:
        return f"{self.prefix}x{US}{max(0, expires):016d}{US}{key}".encode()

    def get_conversation(self, key: str) -> ConversationState | None:
        raw = self.store.get(self._key(key))
        if raw is None:
            return None
        _, wire = _decode_conversation(raw)
        return ConversationState.from_wire(wire)

    def put_conversation(self, key: str, conv: ConversationState, expires: int) -> None:
        self.store.put(self._key(key), _encode((expires, conv.to_wire())))
        self.store.put(self._index_key(expires, key), b"")

    def drop_conversation(self, key: str) -> None:
        raw = self.store.get(self._key(key))
        if raw is None:
            return
        expires, _ = _decode_expires(raw)
        self.store.delete(self._key(key))
        self.store.delete(self._index_key(expires, key))

    def has_alert(self, key: str) -> bool:
        return self.store.get(self._key(key)) is not None

    def put_alert(self, key: str, t: int, expires: int) -> None:
        self.store.put(self._key(key), _encode((expires, t)))
        self.store.put(self._index_key(expires, key), b"")

    def expire(self, high_water: int) -> None:
        """Forget every entry whose expiry is before ``high_water`` (committed index entries, in order)."""
        bound = f"{self.prefix}x{US}{max(0, high_water):016d}".encode()
        for index, _ in self.store.range(self._index, bound):
            key = index[len(self._index) + 17 :].decode()
            self.store.delete(index)
            self.store.delete(self._key(key))

"""Per-partition key-value state: committed data in memory or on disk (RocksDB), plus the batch's writes.

Writes of a batch stay *pending* in the :class:`PartitionStore` (readable at once by the
processor); the runtime takes them as the batch's changelog records, and they stay readable as
*uncommitted* (a transaction spans several batches) until the transaction has committed; only
then are they written to the backend, with the changelog offset they reach. An aborted
transaction's writes are discarded: they never reach the backend, and the changelog records it
produced are aborted too, so a read_committed restore never sees them.

Backends:

- :class:`MemoryBackend`: a dict, rebuilt from the changelog at each assignment. A processor that
  keeps all its state itself (the metering worker's ``Meter``) asks for no copy (``retain=False``):
  the restored items are handed over once and dropped.
- :class:`RocksBackend`: a RocksDB database per partition under the data directory, holding the
  state and the changelog offset it reflects, so an assignment replays only the changelog's
  tail; state larger than memory stays on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, Protocol, cast

from rocksdict import Options, Rdict, WriteBatch

#: Where a RocksDB backend records the next changelog offset to restore from (outside processors' keys).
OFFSET_KEY: Final = b"\xff\xff__changelog_offset__"

Changes = dict[bytes, bytes | None]


class Backend(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def items(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...

    def write(self, changes: Mapping[bytes, bytes | None], changelog_offset: int) -> None: ...

    @property
    def changelog_offset(self) -> int:
        """The next changelog offset to read on restore (0: from the beginning)."""
        ...

    def loaded(self) -> None:
        """The processor has been built from ``items()``."""
        ...

    def close(self) -> None: ...

    def wipe(self) -> None:
        """Forget everything: the changelog is read again from its beginning."""
        ...


class MemoryBackend:
    def __init__(self, *, retain: bool = True) -> None:
        self._data: dict[bytes, bytes] = {}
        self._retain = retain
        self._offset = 0
        self._loaded = False

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        if not start:
            yield from self._data.items()
            return
        for key in sorted(k for k in self._data if k >= start):
            yield key, self._data[key]

    def write(self, changes: Mapping[bytes, bytes | None], changelog_offset: int) -> None:
        self._offset = max(self._offset, changelog_offset)
        if self._loaded and not self._retain:
            return  # the processor holds the state
        data = self._data
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    @property
    def changelog_offset(self) -> int:
        return self._offset if self._retain else 0

    def loaded(self) -> None:
        self._loaded = True
        if not self._retain:
            self._data = {}

    def close(self) -> None:
        self._data = {}

    def wipe(self) -> None:
        self._data = {}
        self._offset = 0
        self._loaded = False


class RocksBackend:
    """One RocksDB database (rocksdict) per store partition, opened for the time the partition is assigned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        return Rdict(str(self.path), options)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def items(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=start) if start else self._db.items():
            if key == OFFSET_KEY:
                continue
            yield cast(bytes, key), cast(bytes, value)

    def write(self, changes: Mapping[bytes, bytes | None], changelog_offset: int) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset > self.changelog_offset:
            batch.put(OFFSET_KEY, str(changelog_offset).encode())
        self._db.write(batch)

    @property
    def changelog_offset(self) -> int:
        raw = self._db.get(OFFSET_KEY)
        return int(raw) if raw else 0

    def loaded(self) -> None:
        pass

    def close(self) -> None:
        self._db.close()

    def wipe(self) -> None:
        self._db.close()
        Rdict.destroy(str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()


class PartitionStore:
    """The state of one partition of one topology: the backend's committed data and this batch's writes."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pending: Changes = {}
        #: Taken by earlier batches of the open transaction, not committed yet.
        self._uncommitted: Changes = {}

    def get(self, key: bytes) -> bytes | None:
        """The value as this batch left it (pending writes first), else as the open transaction, else as committed."""
        if key in self._pending:
            return self._pending[key]
        if key in self._uncommitted:
            return self._uncommitted[key]
        return self.backend.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def delete(self, key: bytes) -> None:
        self._pending[key] = None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """The committed items (what a processor is built from after restore)."""
        return self.backend.items()

    def range(self, start: bytes, stop: bytes) -> list[tuple[bytes, bytes]]:
        """The committed items with ``start <= key < stop``, in key order."""
        out = []
        for key, value in self.backend.items(start):
            if key >= stop:
                break
            out.append((key, value))
        return out

    @property
    def pending(self) -> Changes:
        return self._pending

    def take_pending(self) -> Changes:
        """This batch's writes, for the open transaction: readable as uncommitted until :meth:`committed`."""
        pending, self._pending = self._pending, {}
        self._uncommitted.update(pending)
        return pending

    def committed(self) -> None:
        """The open transaction committed: its writes are in the backend now."""
        self._uncommitted = {}

    def discard(self) -> None:
        self._pending = {}
        self._uncommitted = {}

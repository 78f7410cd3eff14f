"""Kafka's Java-compatible murmur2 partitioner: the partition a producer picks for a key.

The workers reject an event on a partition its key does not hash to (its state lives
elsewhere), so they hash every event's key: compiled with the rules engine (``pipeline.infra.native``).
Products are split in 16-bit halves so that every intermediate value stays a small integer.
"""

from __future__ import annotations

from typing import Final

_SEED: Final = 0x9747B28C
_M_LOW: Final = 0x5BD1E995 & 0xFFFF
_M_HIGH: Final = 0x5BD1E995 >> 16
_MASK: Final = 0xFFFFFFFF


def _times_m(x: int) -> int:
    """``x * 0x5bd1e995`` modulo 2**32."""
    return (x * _M_LOW + (((x * _M_HIGH) & 0xFFFF) << 16)) & _MASK


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length & ~3
    i = 0
    while i < end:
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = _times_m(k)
        k ^= k >> 24
        k = _times_m(k)
        h = _times_m(h) ^ k
        i += 4
    extra = length & 3
    if extra == 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = _times_m(h)
    h ^= h >> 13
    h = _times_m(h)
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition a Java-compatible producer (librdkafka: ``murmur2_random``) picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions

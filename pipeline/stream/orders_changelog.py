"""The order processor's changelog: one record per order, a small head per account, one per id seen.

An account's state used to be one record (key ``account_id``, its whole
:class:`~pipeline.orders.book.AccountOrders`), which grew with every order until it passed the
broker's record limit and the account's partition stopped. Now no record grows with the number
of orders (docs/orders.md, "State"):

- ``h␞<account>``: the head (:class:`AccountHead`): billing type and the next document number;
- ``o␞<account>␞<order>``: one order (:class:`OrderEntry`), bounded by the order's own fields;
- ``s␞<account>␞p|a␞<event id>``: a payment or ``account_changed`` already applied
  (:class:`SeenEntry`), so a copy of it changes nothing.

Values are tagged msgpack and carry their own ids, so a restore never parses keys. A record of
the old layout (a key with no ``␞``) is read as it was and rewritten in the new one
(:func:`rebuild` says which accounts need it), with a tombstone for the old key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
from msgspec import Struct

from pipeline.contract.events import BillingType
from pipeline.orders.book import AccountOrders, Order

SEP: Final = "\x1e"
SeenKind = Literal["payment", "account_event"]


class AccountHead(Struct, tag_field="record", tag="head", kw_only=True):
    """What an account's orders share: the billing type in force and the next document number."""

    account_id: str
    billing_type: BillingType = "prepaid"
    billing_type_key: tuple[int, str] | None = None
    next_number: int = 1


class OrderEntry(Struct, tag_field="record", tag="order", kw_only=True):
    account_id: str
    order: Order


class SeenEntry(Struct, tag_field="record", tag="seen", kw_only=True):
    account_id: str
    kind: SeenKind
    event_id: str


Entry = AccountHead | OrderEntry | SeenEntry

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Entry)
_legacy: Final = msgspec.msgpack.Decoder(AccountOrders)


def head_key(account_id: str) -> bytes:
    return f"h{SEP}{account_id}".encode()


def order_key(account_id: str, order_id: str) -> bytes:
    return f"o{SEP}{account_id}{SEP}{order_id}".encode()


def seen_key(account_id: str, kind: SeenKind, event_id: str) -> bytes:
    return f"s{SEP}{account_id}{SEP}{kind[0]}{SEP}{event_id}".encode()


def is_legacy(key: bytes) -> bool:
    """A record of the one-record-per-account layout: its key is the bare ``account_id``."""
    return SEP.encode() not in key


def encode_head(book: AccountOrders) -> bytes:
    return _encoder.encode(
        AccountHead(
            account_id=book.account_id,
            billing_type=book.billing_type,
            billing_type_key=book.billing_type_key,
            next_number=book.next_number,
        )
    )


def encode_order(account_id: str, order: Order) -> bytes:
    return _encoder.encode(OrderEntry(account_id=account_id, order=order))


def encode_seen(account_id: str, kind: SeenKind, event_id: str) -> bytes:
    return _encoder.encode(SeenEntry(account_id=account_id, kind=kind, event_id=event_id))


@dataclass(slots=True)
class Restored:
    """The books of a partition, and the accounts still in the old layout (to rewrite, old key deleted)."""

    books: dict[str, AccountOrders] = field(default_factory=dict)
    legacy: dict[str, bytes] = field(default_factory=dict)


def rebuild(items: Iterable[tuple[bytes, bytes | None]]) -> Restored:
    """The books from the changelog's records (oldest first; the last record of a key wins).

    Records of the new layout win over an old-layout record of the same account (the upgrade
    writes both in one transaction, so this matters only if an old build ran again meanwhile).
    """
    latest: dict[bytes, bytes] = {}
    for key, value in items:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    out = Restored()
    entries: list[Entry] = []
    for key, value in latest.items():
        if is_legacy(key):
            old = _legacy.decode(value)
            out.legacy[old.account_id] = key
            out.books[old.account_id] = old
        else:
            entries.append(_decoder.decode(value))
    for entry in entries:
        book = out.books.get(entry.account_id)
        if book is None:
            book = out.books[entry.account_id] = AccountOrders(account_id=entry.account_id)
        if isinstance(entry, AccountHead):
            book.billing_type, book.billing_type_key = entry.billing_type, entry.billing_type_key
            book.next_number = max(book.next_number, entry.next_number)  # numbers are never reused
        elif isinstance(entry, OrderEntry):
            book.orders[entry.order.created.order_id] = entry.order
        elif entry.kind == "payment":
            book.payments_seen.add(entry.event_id)
        else:
            book.account_events.add(entry.event_id)
    return out


def records_of(book: AccountOrders) -> list[tuple[bytes, bytes]]:
    """Every record of an account in the new layout (the upgrade of an old-layout record)."""
    account = book.account_id
    out = [(head_key(account), encode_head(book))]
    out += [(order_key(account, order_id), encode_order(account, o)) for order_id, o in sorted(book.orders.items())]
    out += [(seen_key(account, "payment", e), encode_seen(account, "payment", e)) for e in sorted(book.payments_seen)]
    out += [
        (seen_key(account, "account_event", e), encode_seen(account, "account_event", e))
        for e in sorted(book.account_events)
    ]
    return out

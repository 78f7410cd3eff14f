"""Exact decimal money: one explicit arithmetic context and one output format.

Every sum goes through ``MONEY`` rather than the ambient ``decimal`` context, which is
thread-local and can be changed by any library in the process: balances must not depend on
who ran before us. Sixty significant digits hold any sum of contract amounts (at most 15
integer and 6 fraction digits) over more sessions than can ever exist, so nothing is ever
rounded; ``Inexact`` is trapped to make that a checked fact rather than a hope.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Final

from iso4217 import raw_table as _ISO_4217

MONEY: Final = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])
ZERO: Final = Decimal(0)
_MICRO: Final = Decimal("0.000001")
_CENT: Final = Decimal("0.01")


#: Exact sum and difference (bound once: they run for every charged session).
add: Final = MONEY.add
sub: Final = MONEY.subtract


def format_money(amount: Decimal) -> str:
    """The contract's decimal string: plain digits, at least 2 and at most 6 fraction digits.

    The same amount always prints the same way, whatever history produced it (``1.10`` and
    ``1.100`` are one value): alerts and reports then compare as strings too. Contract
    amounts have at most 6 fraction digits, so quantizing to them is exact.
    """
    q = MONEY.quantize(amount, _MICRO)
    if q.is_zero():
        return "0.00"
    q = q.normalize(MONEY)
    exponent = q.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        q = MONEY.quantize(q, _CENT)
    return f"{q:f}"


#: ISO 4217 minor units of the currencies in use, from the standard's current list (the iso4217
#: package's copy of it): USD 2, JPY 0, KWD 3, CLF 4. Funds, metals and test codes (XAU, XDR,
#: XXX: "N.A.") are not money a balance is kept in, so they are not currencies here.
_MINOR_UNITS: Final[dict[str, int]] = {
    str(code): int(str(entry["CcyMnrUnts"]))
    for code, entry in _ISO_4217.items()
    if isinstance(code, str) and str(entry.get("CcyMnrUnts")).isdigit()
}


def is_currency(code: str) -> bool:
    """Whether ``code`` is an ISO 4217 currency in use (``USD``, ``JPY``; not ``ZZZ``, ``usd`` or ``XAU``)."""
    return code in _MINOR_UNITS


def minor_units(currency: str) -> int:
    """How many decimals an amount paid in ``currency`` may have (ISO 4217): 2 for USD, 0 for JPY, 3 for KWD."""
    return _MINOR_UNITS.get(currency, 2)


def format_amount(amount: Decimal, currency: str) -> str:
    """``amount`` as ``currency`` writes it: with its minor units (JPY ``100``, USD ``100.00``, KWD ``100.000``).

    Never rounded: a fraction of a minor unit that is there (a balance after sessions priced at
    0.005 USD) keeps its digits, up to the contract's six (``49.995``). What people read (the
    console, invoices) uses this; records between processes keep ``format_money``'s form.
    """
    q = MONEY.quantize(amount, _MICRO)
    if q.is_zero():
        q = ZERO
    q = q.normalize(MONEY)
    places = minor_units(currency)
    if decimals_of(q) < places:
        q = MONEY.quantize(q, Decimal(1).scaleb(-places))
    return f"{q:f}"


def decimals_of(amount: Decimal) -> int:
    """The decimals ``amount`` needs: trailing zeros do not count (``10.50`` and ``10.500`` need 1)."""
    exponent = amount.normalize(MONEY).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0

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


#: ISO 4217 minor units of the currencies that do not have two; every other currency has two.
_MINOR_UNITS: Final[dict[str, int]] = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def minor_units(currency: str) -> int:
    """How many decimals an amount paid in ``currency`` may have (ISO 4217): 2 for USD, 0 for JPY, 3 for KWD."""
    return _MINOR_UNITS.get(currency, 2)


def decimals_of(amount: Decimal) -> int:
    """The decimals ``amount`` needs: trailing zeros do not count (``10.50`` and ``10.500`` need 1)."""
    exponent = amount.normalize(MONEY).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0

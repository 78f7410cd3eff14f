"""Payment providers: how an order gets paid. One Protocol, one built-in adapter (``manual``).

The order processor calls :meth:`PaymentProvider.start` once when it applies a new ``order_created``
(a copy of a known order is a duplicate before any provider is asked; it is asked again only after a
crash, if the transaction that applied the order was aborted: a provider must treat the ``order_id``
as its idempotency key). A provider that settles at once returns the outcome; one
that settles later returns None, and its confirmation arrives as a ``payment_updated`` on
billing-orders (a provider's webhook, or an operator), which is idempotent: the order's state
decides, so a confirmation delivered twice pays once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from pipeline.orders.events import OrderCreated, PaymentResult


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """What a provider says about an order it was asked to collect."""

    status: PaymentResult
    payment_method: str
    reference: str | None = None
    reason: str | None = None


class PaymentProvider(Protocol):
    """An adapter to a payment service; ``name`` is what admins choose as ``payment_method``."""

    @property
    def name(self) -> str: ...

    def start(self, order: OrderCreated) -> PaymentOutcome | None:
        """Ask for the payment of ``order``; its outcome if known at once, else None (it comes later)."""
        ...


class ManualProvider:
    """Paid at once: for local runs, demos and tests, and for payments settled outside the product."""

    name: Final = "manual"

    def start(self, order: OrderCreated) -> PaymentOutcome:
        return PaymentOutcome(status="paid", payment_method="manual", reference=f"manual:{order.order_id}")


class TransferProvider:
    """Paid by bank transfer: pending until an operator records the money's arrival
    (``metering orders paid ORDER``) or its failure (``metering orders failed ORDER``)."""

    name: Final = "transfer"

    def start(self, order: OrderCreated) -> None:
        return None


#: The providers this build knows, by name (the console accepts these as ``payment_method``).
BUILT_IN: Final[dict[str, PaymentProvider]] = {"manual": ManualProvider(), "transfer": TransferProvider()}

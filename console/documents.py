"""Invoices and credit notes as PDF (fpdf2), rendered from the immutable ``invoice_issued`` record.

The document is a pure function of the record: the same invoice renders to the same bytes today
and in a year (the PDF's creation date is the issue date), so "an invoice never changes once
issued" holds for the file too. Text is drawn in DejaVu Sans when the system has it (any script);
otherwise in the PDF core font Helvetica, which covers Latin-1 only: other characters are shown
as "?" rather than failing the download.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Final

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from pipeline.orders.events import InvoiceIssued

#: Where Debian and most distributions put DejaVu Sans (fonts-dejavu-core).
UNICODE_FONTS: Final = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
)
_TITLES: Final = {"invoice": "Invoice", "credit_note": "Credit note"}


def render_invoice(invoice: InvoiceIssued) -> bytes:
    """The PDF of an invoice or credit note: seller, account, number, dates, lines, total, payment."""
    pdf = FPDF(format="A4")
    pdf.set_creation_date(invoice.issued_at)
    pdf.set_title(f"{_TITLES[invoice.kind]} {invoice.invoice_id}")
    pdf.set_author(invoice.seller)
    font = _font(pdf)
    text = _writer(font)
    pdf.add_page()
    pdf.set_font(font, size=20)
    pdf.cell(0, 12, text(f"{_TITLES[invoice.kind]} {invoice.invoice_id}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(font, size=11)
    rows = [
        ("Seller", invoice.seller),
        ("Account", invoice.account_id),
        ("App", invoice.app_id),
        ("Invoice number", invoice.invoice_id),
        ("Order", invoice.order_id),
        ("Issue date", _date(invoice.issued_at)),
        ("Billing date", invoice.billing_date.isoformat()),
    ]
    if invoice.refers_to:
        rows.append(("Credits invoice", invoice.refers_to))
    pdf.ln(4)
    for label, value in rows:
        pdf.cell(45, 7, text(label))
        pdf.cell(0, 7, text(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(6)
    widths = (95, 20, 35, 35)
    pdf.set_font(font, size=10)
    for heading, width in zip(("Description", "Quantity", "Unit price", "Amount"), widths, strict=True):
        pdf.cell(width, 8, heading, border="B", align="L" if heading == "Description" else "R")
    pdf.ln()
    for line in invoice.lines:
        cells = (line.description, str(line.quantity), line.unit_price, line.amount)
        for value, width, align in zip(cells, widths, ("L", "R", "R", "R"), strict=True):
            pdf.cell(width, 8, text(value), align=align)
        pdf.ln()
    pdf.set_font(font, size=12)
    pdf.cell(widths[0] + widths[1] + widths[2], 10, "Total", border="T", align="R")
    pdf.cell(widths[3], 10, text(f"{invoice.total} {invoice.currency}"), border="T", align="R")
    pdf.ln(14)
    pdf.set_font(font, size=11)
    pdf.cell(45, 7, "Payment method")
    pdf.cell(0, 7, text(invoice.payment_method), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.cell(45, 7, "Payment status")
    pdf.cell(0, 7, text(invoice.payment_status), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


def _font(pdf: FPDF) -> str:
    for path in UNICODE_FONTS:
        if path.is_file():
            pdf.add_font("DejaVu", fname=str(path))
            return "DejaVu"
    return "Helvetica"


def _writer(font: str) -> Callable[[str], str]:
    return _as_is if font == "DejaVu" else _latin1


def _as_is(value: str) -> str:
    return value


def _latin1(value: str) -> str:
    """The core fonts cover Latin-1: anything else becomes "?" (the record keeps the exact text)."""
    return value.encode("latin-1", "replace").decode("latin-1")


def _date(value: datetime) -> str:
    return value.date().isoformat()

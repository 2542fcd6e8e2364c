"""An issued invoice as a PDF (ReportLab: maintained, pure Python, no system libraries, and its
standard fonts keep the text extractable for whoever reads the PDF back)."""

from __future__ import annotations

import io

from django.conf import settings

from .models import Invoice, InvoiceSection


def render(invoice: Invoice) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        title=f"Invoice {invoice.display_number}",
        author=settings.FACTORY_BILLING_ISSUER,
    )
    story = [
        Paragraph(f"Invoice {invoice.display_number}", styles["Title"]),
        Paragraph(
            f"Issued by {settings.FACTORY_BILLING_ISSUER} on {invoice.issue_date:%Y-%m-%d}", styles["Normal"]
        ),
        Paragraph(f"Billing account: {invoice.account_name} ({invoice.account_slug})", styles["Normal"]),
        Paragraph(f"Billing period: {invoice.month:%Y-%m}", styles["Normal"]),
        Spacer(1, 6 * mm),
    ]
    rows = [["Section", "GPU type", "Cluster", "GPU-hours", "kWh", "Amount", "Currency"]]
    sections = dict(InvoiceSection.choices)
    for line in invoice.lines.all():
        rows.append(
            [
                sections[line.section],
                line.gpu_type or "-",
                line.cluster or "-",
                f"{line.gpu_hours}",
                f"{line.energy_kwh}",
                f"{line.amount}",
                line.currency or "-",
            ]
        )
    for currency, total in invoice.totals.items():
        rows.append(["Total due", "", "", "", "", total, currency])
    table = Table(rows, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("ALIGN", (3, 1), (5, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                ("FONT", (0, len(rows) - len(invoice.totals)), (-1, -1), "Helvetica-Bold"),
                (
                    "LINEABOVE",
                    (0, len(rows) - len(invoice.totals)),
                    (-1, len(rows) - len(invoice.totals)),
                    0.5,
                    colors.black,
                ),
            ]
        )
    )
    story += [
        table,
        Spacer(1, 6 * mm),
        Paragraph(
            f"Energy: {invoice.energy_kwh} kWh. Emissions: {invoice.co2e_kg} kg CO2e.", styles["Normal"]
        ),
        Paragraph(
            f"{invoice.ledger_lines} ledger lines; their FOCUS rows sum to this invoice. "
            "Amounts in different currencies are owed separately.",
            styles["Normal"],
        ),
    ]
    document.build(story)
    return buffer.getvalue()

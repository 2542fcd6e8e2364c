"""The chargeback report of a month and its exports (CSV, XLSX, FOCUS rows).

The report reads the monthly summary (kept with each ledger line), so it costs the same whatever
the number of lines; its rows' amounts are sums of rounded lines and its totals are sums of its
rows, per currency: it reconciles to the cent. Line-level exports stream the ledger in id order,
a chunk at a time, in constant memory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal

from django.db import models

from .models import CENT, ZERO, MonthClose, MonthlySummary

CHUNK = 20000
REPORT_COLUMNS = [
    "tenant",
    "tenant_name",
    "cost_center",
    "gpu_type",
    "currency",
    "gpu_hours",
    "charged_gpu_hours",
    "amount",
    "energy_kwh",
    "co2e_kg",
    "jobs",
]


@dataclasses.dataclass(frozen=True)
class ReportRow:
    tenant: str
    tenant_name: str
    cost_center: str
    gpu_type: str
    currency: str
    gpu_hours: Decimal
    charged_gpu_hours: Decimal
    amount: Decimal
    energy_kwh: Decimal
    co2e_kg: Decimal
    jobs: int

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in REPORT_COLUMNS}


@dataclasses.dataclass(frozen=True)
class Report:
    month: date
    closed: bool
    rows: list[ReportRow]
    totals: dict[str, Decimal]  # amount per currency
    gpu_hours: Decimal
    energy_kwh: Decimal
    co2e_kg: Decimal
    jobs: int

    def as_json(self) -> dict:
        return {
            "month": f"{self.month:%Y-%m}",
            "closed": self.closed,
            "rows": [{k: _json(v) for k, v in row.as_dict().items()} for row in self.rows],
            "totals": {
                "amount": {currency: str(total) for currency, total in self.totals.items()},
                "gpu_hours": str(self.gpu_hours),
                "energy_kwh": str(self.energy_kwh),
                "co2e_kg": str(self.co2e_kg),
                "jobs": self.jobs,
            },
        }


def _json(value):
    return str(value) if isinstance(value, Decimal) else value


FOURTH = Decimal("0.0001")


def _exact(value, places: Decimal) -> Decimal:
    """Sums of stored decimals at their stored precision (SQLite sums decimals as floats)."""
    return (value or ZERO).quantize(places)


def hours(seconds) -> Decimal:
    return (Decimal(seconds or 0) / 3600).quantize(Decimal("0.0001"))


def chargeback(month: date, *, tenants: Iterable[int] | None = None) -> Report:
    summaries = MonthlySummary.objects.filter(month=month)
    if tenants is not None:
        summaries = summaries.filter(tenant_id__in=list(tenants))
    grouped = (
        summaries.values("tenant__slug", "tenant__name", "cost_center", "gpu_type__slug", "currency")
        .annotate(
            gpu_seconds=models.Sum("gpu_seconds"),
            charged_seconds=models.Sum("charged_gpu_seconds"),
            amount=models.Sum("amount"),
            energy=models.Sum("energy_kwh"),
            co2e=models.Sum("co2e_kg"),
            jobs=models.Sum("jobs"),
        )
        .order_by("tenant__slug", "cost_center", "gpu_type__slug", "currency")
    )
    rows = [
        ReportRow(
            tenant=g["tenant__slug"],
            tenant_name=g["tenant__name"],
            cost_center=g["cost_center"],
            gpu_type=g["gpu_type__slug"] or "",  # a credit granted as an amount
            currency=g["currency"],
            gpu_hours=hours(g["gpu_seconds"]),
            charged_gpu_hours=hours(g["charged_seconds"]),
            amount=_exact(g["amount"], CENT),
            energy_kwh=_exact(g["energy"], FOURTH),
            co2e_kg=_exact(g["co2e"], FOURTH),
            jobs=g["jobs"] or 0,
        )
        for g in grouped
    ]
    totals: dict[str, Decimal] = {}
    for row in rows:
        if row.currency:
            totals[row.currency] = totals.get(row.currency, ZERO) + row.amount
    return Report(
        month=month,
        closed=MonthClose.objects.filter(month=month).exists(),
        rows=rows,
        totals=totals,
        gpu_hours=sum((r.gpu_hours for r in rows), ZERO),
        energy_kwh=sum((r.energy_kwh for r in rows), ZERO),
        co2e_kg=sum((r.co2e_kg for r in rows), ZERO),
        jobs=sum(r.jobs for r in rows),
    )


# --- exports -----------------------------------------------------------------------------------


def report_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(REPORT_COLUMNS)
    for row in report.rows:
        writer.writerow([row.as_dict()[c] for c in REPORT_COLUMNS])
    for currency, total in report.totals.items():
        writer.writerow(
            [
                "TOTAL",
                "",
                "",
                "",
                currency,
                report.gpu_hours,
                "",
                total,
                report.energy_kwh,
                report.co2e_kg,
                report.jobs,
            ]
        )
    return out.getvalue()


def report_xlsx(report: Report) -> bytes:
    """A real spreadsheet: numbers are numeric cells, money has a two-decimal format, a totals row."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(f"Chargeback {report.month:%Y-%m}")
    bold = Font(bold=True)
    sheet.append([_cell(sheet, name, font=bold) for name in REPORT_COLUMNS])
    numeric = {
        "gpu_hours": "0.0000",
        "charged_gpu_hours": "0.0000",
        "amount": "#,##0.00",
        "energy_kwh": "0.0000",
        "co2e_kg": "0.0000",
        "jobs": "0",
    }
    for row in report.rows:
        values = row.as_dict()
        sheet.append([_cell(sheet, values[c], number_format=numeric.get(c)) for c in REPORT_COLUMNS])
    for currency, total in report.totals.items():
        totals = {
            "tenant": "TOTAL",
            "currency": currency,
            "gpu_hours": report.gpu_hours,
            "amount": total,
            "energy_kwh": report.energy_kwh,
            "co2e_kg": report.co2e_kg,
            "jobs": report.jobs,
        }
        sheet.append(
            [_cell(sheet, totals.get(c, ""), number_format=numeric.get(c), font=bold) for c in REPORT_COLUMNS]
        )
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _cell(sheet, value, *, number_format: str | None = None, font=None):
    """A write-only cell (memory stays flat); Decimals are stored as numbers, not text."""
    from openpyxl.cell import WriteOnlyCell

    cell = WriteOnlyCell(sheet, value=value)
    if number_format and isinstance(value, (int, float, Decimal)):
        cell.number_format = number_format
    if font is not None:
        cell.font = font
    return cell


def focus_csv_stream(month: date, tenants: Iterable[int] | None = None) -> Iterator[bytes]:
    """FOCUS cost-and-usage rows of the month as CSV, streamed (see billing.focus)."""
    from . import focus

    return focus.csv_stream(month, tenants)

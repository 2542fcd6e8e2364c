"""The chargeback report of a month and its exports (CSV, XLSX, FOCUS rows).

The report reads the monthly summary (kept with each ledger line), so it costs the same whatever
the number of lines; its rows' amounts are sums of rounded lines and its totals are sums of its
rows, per currency: it reconciles to the cent. Rows are grouped by department (the tenant's
ancestor just below its organisation, as the tenant tree is now: factory.hierarchy) and cost
center, with subtotals per department and per cost center, each per currency, in every export.
Line-level exports stream the ledger in id order, a chunk at a time, in constant memory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal
from typing import ClassVar

from django.db import models

from .models import CENT, ZERO, MonthClose, MonthlySummary

CHUNK = 20000
REPORT_COLUMNS = [
    "tenant",
    "tenant_name",
    "department",
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


SUBTOTAL = "SUBTOTAL"  # in the tenant column of a subtotal row, as TOTAL in a total's


@dataclasses.dataclass(frozen=True)
class ReportRow:
    tenant: str
    tenant_name: str
    department: str
    cost_center: str
    gpu_type: str
    currency: str
    gpu_hours: Decimal
    charged_gpu_hours: Decimal
    amount: Decimal
    energy_kwh: Decimal
    co2e_kg: Decimal
    jobs: int

    is_subtotal: ClassVar[bool] = False

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in REPORT_COLUMNS}


@dataclasses.dataclass(frozen=True)
class Subtotal:
    """A department's or a cost center's rows added up, in one currency."""

    by: str  # "department" or "cost_center"
    key: str
    currency: str
    gpu_hours: Decimal = ZERO
    charged_gpu_hours: Decimal = ZERO
    amount: Decimal = ZERO
    energy_kwh: Decimal = ZERO
    co2e_kg: Decimal = ZERO
    jobs: int = 0

    is_subtotal: ClassVar[bool] = True

    def plus(self, row: ReportRow) -> Subtotal:
        return dataclasses.replace(
            self,
            gpu_hours=self.gpu_hours + row.gpu_hours,
            charged_gpu_hours=self.charged_gpu_hours + row.charged_gpu_hours,
            amount=self.amount + row.amount,
            energy_kwh=self.energy_kwh + row.energy_kwh,
            co2e_kg=self.co2e_kg + row.co2e_kg,
            jobs=self.jobs + row.jobs,
        )

    def as_json(self) -> dict:
        values = {self.by: self.key, "currency": self.currency}
        for name in ("gpu_hours", "charged_gpu_hours", "amount", "energy_kwh", "co2e_kg", "jobs"):
            values[name] = _json(getattr(self, name))
        return values

    def as_dict(self) -> dict:
        """In the report's columns: SUBTOTAL as the tenant, the department or cost center named."""
        return {
            "tenant": SUBTOTAL,
            "tenant_name": "",
            "department": self.key if self.by == "department" else "",
            "cost_center": self.key if self.by == "cost_center" else "",
            "gpu_type": "",
            "currency": self.currency,
            "gpu_hours": self.gpu_hours,
            "charged_gpu_hours": self.charged_gpu_hours,
            "amount": self.amount,
            "energy_kwh": self.energy_kwh,
            "co2e_kg": self.co2e_kg,
            "jobs": self.jobs,
        }


def subtotals(rows: list[ReportRow], by: str) -> list[Subtotal]:
    """Per department or cost center (in the order they come first), per currency."""
    found: dict[tuple[str, str], Subtotal] = {}
    for row in rows:
        key = (getattr(row, by), row.currency)
        found[key] = found.get(key, Subtotal(by, *key)).plus(row)
    return list(found.values())


@dataclasses.dataclass(frozen=True)
class Report:
    month: date
    closed: bool
    rows: list[ReportRow]  # by department, cost center, tenant, GPU type, currency
    totals: dict[str, Decimal]  # amount per currency
    gpu_hours: Decimal
    energy_kwh: Decimal
    co2e_kg: Decimal
    jobs: int

    @property
    def by_department(self) -> list[Subtotal]:
        return subtotals(self.rows, "department")

    @property
    def by_cost_center(self) -> list[Subtotal]:
        return subtotals(sorted(self.rows, key=lambda r: (r.cost_center, r.currency)), "cost_center")

    def grouped(self) -> list[ReportRow | Subtotal]:
        """The rows with each department's subtotals after its rows: what the exports list."""
        after: dict[str, list[Subtotal]] = {}
        for sub in self.by_department:
            after.setdefault(sub.key, []).append(sub)
        lines: list[ReportRow | Subtotal] = []
        for i, row in enumerate(self.rows):  # in department order
            lines.append(row)
            if i + 1 == len(self.rows) or self.rows[i + 1].department != row.department:
                lines += after[row.department]
        return lines

    def as_json(self) -> dict:
        return {
            "month": f"{self.month:%Y-%m}",
            "closed": self.closed,
            "rows": [{k: _json(v) for k, v in row.as_dict().items()} for row in self.rows],
            "subtotals": {
                by: [sub.as_json() for sub in subs]
                for by, subs in (("department", self.by_department), ("cost_center", self.by_cost_center))
            },
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
    from factory.hierarchy import TenantTree
    from factory.models import Tenant

    summaries = MonthlySummary.objects.filter(month=month)
    if tenants is not None:
        summaries = summaries.filter(tenant_id__in=list(tenants))
    names = {pk: (slug, parent) for pk, slug, parent in Tenant.objects.values_list("pk", "slug", "parent_id")}
    tree = TenantTree({pk: parent for pk, (_, parent) in names.items()})
    grouped = (
        summaries.values(
            "tenant_id", "tenant__slug", "tenant__name", "cost_center", "gpu_type__slug", "currency"
        )
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
            department=names[tree.department(g["tenant_id"])][0],
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
    rows.sort(key=lambda r: (r.department, r.cost_center, r.tenant, r.gpu_type, r.currency))
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
    for line in [*report.grouped(), *report.by_cost_center]:
        writer.writerow([line.as_dict()[c] for c in REPORT_COLUMNS])
    for currency, total in report.totals.items():
        writer.writerow(
            [
                "TOTAL",
                "",
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
    """A real spreadsheet: numbers are numeric cells, money has a two-decimal format; subtotal rows
    (per department after its rows, then per cost center) and totals rows in bold."""
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
    for line in [*report.grouped(), *report.by_cost_center]:
        values, font = line.as_dict(), bold if isinstance(line, Subtotal) else None
        sheet.append(
            [_cell(sheet, values[c], number_format=numeric.get(c), font=font) for c in REPORT_COLUMNS]
        )
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

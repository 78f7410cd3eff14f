"""What `metering reconcile` prints: the differences on stdout (table, csv, json), a summary on stderr."""

from __future__ import annotations

import json
from typing import Any, Final

from cli.reconcile.run import Report
from pipeline.contract.events import format_ms
from pipeline.infra.report import Format, render
from pipeline.rules.attribution import USAGE_COLUMNS

METRICS: Final = USAGE_COLUMNS[3:]
DAY_COLUMNS: Final = ("account_id", "app_id", "day", "source", *METRICS)
SESSION_COLUMNS: Final = (
    "status",
    "billing_session_id",
    "account_id",
    "app_id",
    "day",
    "kind",
    "started_at",
    "clickhouse_started_at",
)
#: Sessions listed in the terminal table; csv lists none, json all.
TABLE_SESSIONS: Final = 200


def render_report(report: Report, fmt: Format) -> str:
    """The report on stdout: per-day differences (csv), plus the sessions (table: some, json: all)."""
    day_rows = [row for d in report.days for row in d.rows()]
    if fmt == "csv":
        return render(DAY_COLUMNS, day_rows, "csv")
    differences = report.comparison.differences
    if fmt == "json":
        payload = {
            "summary": _summary(report),
            "days": [dict(zip(DAY_COLUMNS, row, strict=True)) for row in day_rows],
            "sessions": [{**dict(zip(SESSION_COLUMNS, d.row(), strict=True)), "reason": d.reason} for d in differences],
        }
        return json.dumps(payload, indent=1) + "\n"
    title = f"Usage differences {report.period}"
    text = render(DAY_COLUMNS, day_rows, "table", title=title) if day_rows else f"{title}: none\n"
    if differences:
        shown = [d.row() for d in differences[:TABLE_SESSIONS]]
        text += render(SESSION_COLUMNS, shown, "table", title="Session differences")
        if len(differences) > TABLE_SESSIONS:
            text += f"... and {len(differences) - TABLE_SESSIONS} more: --format json lists them all\n"
    return text


def _summary(report: Report) -> dict[str, Any]:
    c, t = report.comparison, report.truth
    return {
        "period": {"from": report.period.first.isoformat(), "to": report.period.last.isoformat(),
                   "timezone": report.period.tz},
        "source": t.source,
        "clickhouse": report.where,
        "events": t.events,
        "invalid": t.invalid,
        "duplicates": t.duplicates,
        "truth_sessions": c.truth_sessions,
        "clickhouse_sessions": c.clickhouse_sessions,
        "missing": c.count("missing"),
        "extra": c.count("extra"),
        "moved": c.count("moved"),
        "voided": c.count("voided"),
        "unfinished": len(t.unfinished),
        "unfinished_in_clickhouse": c.unfinished,
        "unverifiable": c.unverifiable,
        "days_different": len(report.days),
        "repair": None if report.repaired is None else {
            "run_id": report.repaired.run_id,
            "inserted": report.repaired.inserted,
            "voided": report.repaired.voided,
            "days_different_after": len(report.repaired.days_after),
        },
        "exit_code": report.exit_code,
    }  # fmt: skip


def summary_text(report: Report) -> str:
    """The stderr summary: what was read, what differs, what was done, and what to do next."""
    c, t, r = report.comparison, report.truth, report.repaired
    lines = [
        f"reconcile {report.period}: truth from {t.source} ({t.events} events, {t.invalid} left out as invalid"
        f"{_codes(t.rejected)}, {t.duplicates} duplicates); ClickHouse: {report.where}",
        f"sessions: {c.truth_sessions} billed by the rules, {c.clickhouse_sessions} in ClickHouse; "
        f"{c.count('missing')} missing, {c.count('extra')} extra, {c.count('moved')} moved, "
        f"{c.count('voided')} voided earlier; {len(report.days)} (account, app, day) differ",
        *t.invalid_examples,
    ]
    if t.unfinished or c.unfinished:
        lines.append(
            f"{len(t.unfinished)} sessions of conversations still going on ({c.unfinished} already in ClickHouse) "
            "were left alone: reconcile again once they are over"
        )
    if c.unverifiable:
        lines.append(
            f"{c.unverifiable} sessions may depend on messages retention deleted (before "
            f"{format_ms(t.complete_from_ms or 0)}) and were left alone: reconcile this period from an archive"
        )
    if t.plans_truncated:
        lines.append("the billing-plans topic lost messages to retention: idle timeouts of old plans are unknown")
    if c.unrepairable:
        lines.append(f"{c.unrepairable} sessions billed by the rules are voided: see session_voids for who voided them")
    if r is not None:
        state = "usage now equals the truth" if not r.days_after else f"{len(r.days_after)} days still differ"
        lines.append(f"repaired (run {r.run_id}): {r.inserted} sessions inserted, {r.voided} voided; {state}")
    elif c.differences or report.days:
        lines.append("run again with --repair to write the corrections")
    return "\n".join(lines) + "\n"


def _codes(rejected: dict[str, int]) -> str:
    return f": {', '.join(f'{n} {code}' for code, n in sorted(rejected.items()))}" if rejected else ""

"""Downloads named after free-form app ids (``console.attachments``): an ASCII ``filename=`` and the real name in
RFC 5987 ``filename*=``; never a 500, never a second name smuggled in by a quote."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from console.attachments import attachment
from consumers.clickhouse import Client
from tests.console_support import bearer, console_settings, fill, make_app, token
from tests.support import Conversation, in_time_order

ADMIN = bearer(token())


def _names(disposition: str) -> tuple[str, str]:
    kind, plain, extended = (part.strip() for part in disposition.split(";"))
    assert kind == "attachment"
    assert plain.startswith('filename="')
    assert plain.endswith('"')
    assert extended.startswith("filename*=UTF-8''")
    return plain[len('filename="') : -1], unquote(extended[len("filename*=UTF-8''") :])


@pytest.mark.parametrize(
    ("name", "ascii_name", "real_name"),
    [
        ("usage-acme-bot.csv", "usage-acme-bot.csv", "usage-acme-bot.csv"),
        ("sessions-客服-bot.csv", "sessions-_-bot.csv", "sessions-客服-bot.csv"),
        ('s-acme"; filename="invoice.exe.csv', "s-acme_filename_invoice.exe.csv", 's-acme"; filename="invoice.exe.csv'),
        ("s-../../etc/passwd\n.csv", "s-.._.._etc_passwd_.csv", "s-.._.._etc_passwd_.csv"),
        ("Café.csv", "Cafe.csv", "Café.csv"),
    ],
)
def test_attachment_names(name: str, ascii_name: str, real_name: str) -> None:
    header = attachment(name)
    header.encode("latin-1")  # what Starlette sends: it must encode
    assert header.count('"') == 2
    assert _names(header) == (ascii_name, real_name)


@pytest.mark.parametrize("app_id", ["客服-bot", 'acme"; filename="invoice.exe', "=cmd|calc"])
def test_exports_of_an_app_with_any_id_download(chdb_client: Client, database: str, app_id: str) -> None:
    """App ids are free-form (1-128 code points, schemas/v1/common.json): a non-Latin-1 id was a 500 (Starlette
    encodes headers as Latin-1), a quote rewrote the filename the browser saves."""
    events = Conversation("c-1", app_id=app_id, account_id="acme").user(0).bot(1).events
    fill(chdb_client, database, in_time_order(events))
    app = make_app(chdb_client, database, console_settings(now=datetime(2026, 11, 2, tzinfo=UTC)))
    with TestClient(app, raise_server_exceptions=False) as c:
        for path in ("/api/v1/usage.csv", "/api/v1/sessions.csv"):
            params = {"app": app_id, "range": "7d"} if "usage" in path else {"app": app_id}
            answer = c.get(path, params=params, headers=ADMIN)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            disposition = answer.headers["content-disposition"]
            assert disposition.count('filename="') == 1, disposition
            assert disposition.count('"') == 2, disposition
            _, real = _names(disposition)
            assert app_id in real, real

"""Read the billing sessions of an embedded chDB directory, in a process of its own.

chDB opens one directory per process, and the pytest process already holds the session's
(tests/conftest.py), so the fault tests read a store's directory, once that store has
stopped, by running ``python -m tests.faults.chdb_read <directory> <database>``. It prints
one JSON object:

- ``rows``: physical rows (a re-inserted batch adds rows until merges remove them);
- ``ids``: distinct billing session ids over those rows;
- ``final``: rows after ``FINAL`` (one per sorting key: account, app, session id);
- ``versions``: distinct row contents (every column but ``inserted_at``) over the physical rows;
- ``sessions``: ``{billing_session_id: kind}`` after ``FINAL``.

``rows > ids`` is a harmless re-insert. ``final > ids`` is one id under two sorting keys and
``versions > ids`` one id stored with two contents (e.g. another ``started_at``, so another
15-minute bucket of ``usage_15m``): both count a session twice, and the fault tests refuse them.
"""

from __future__ import annotations

import json
import sys

from consumers.clickhouse import connect

_CONTENT = (
    "account_id, app_id, billing_session_id, kind, channel, user_id, conversation_id, conversation_session_id, "
    "session_index, started_at, ended_at, conversation_started_at, conversation_ended_at, bot_ms, agent_ms, "
    "alert_id, schema_version"
)


def main(directory: str, database: str) -> None:
    client = connect(f"chdb://{directory}", database)
    try:
        table = f"{database}.billing_sessions"
        rows, ids, versions = client.query(
            f"SELECT count(), uniqExact(billing_session_id), uniqExact(tuple({_CONTENT})) FROM {table}"
        ).result_rows[0]
        final = client.query(f"SELECT billing_session_id, kind FROM {table} FINAL").result_rows
    finally:
        client.close()
    sessions = {str(session_id): str(kind) for session_id, kind in final}
    json.dump(
        {"rows": int(rows), "ids": int(ids), "final": len(final), "versions": int(versions), "sessions": sessions},
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

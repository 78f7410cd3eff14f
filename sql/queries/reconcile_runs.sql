-- The audit trail of `metering reconcile --repair`: the latest state of every run, newest first.
--
-- Parameters: database Identifier, limit UInt32.
SELECT
    run_id,
    period_from,
    period_to,
    timezone,
    source,
    status,
    toUnixTimestamp64Milli(started_at) AS started_ms,
    toUnixTimestamp64Milli(finished_at) AS finished_ms,
    missing,
    extra,
    unrepairable,
    inserted,
    voided,
    os_user,
    host,
    detail
FROM {database:Identifier}.reconcile_runs FINAL
ORDER BY started_at DESC, run_id
LIMIT {limit:UInt32}

-- The sessions export (console.md §4): one row per billing session of one account whose start
-- falls in [start, end) (local dates turned into UTC instants), voided sessions left out, in the
-- columns of the spec; times RFC 3339 UTC with milliseconds, as `metering compute --sessions`.
--
-- Parameters: database Identifier; account String; apps Array(String) (empty: all of the
-- account's); start, end DateTime64(3, 'UTC').
--
-- Streamed: FINAL keeps one row per session (a replayed copy merges away) and reads in the
-- sorting key's order, so ORDER BY app_id, billing_session_id needs no sort of its own, only a
-- merge of the sorted parts; one thread, small blocks and no parallel formatting (its buffers
-- cost about 12 MiB) keep memory flat and leave the other core to the sink. A void takes a session out of the 15-minute bucket it names.
--
-- Text from end users' platforms (ids, channel) is made spreadsheet-safe as `metering compute
-- --sessions` writes it (pipeline.report.spreadsheet_safe): a cell starting with = + - @, a tab
-- or a CR gets a leading ' unless it is a plain decimal number. Row by row: streaming stays flat.
-- (Named *_cell, not as the columns: ORDER BY and WHERE keep meaning the stored columns, the
-- sorting key; the CSV carries no names, its header is the route's.)
SELECT
    if(match(app_id, '^[=+@\t\r-]') AND NOT match(app_id, '^[+-]?[0-9]+([.][0-9]+)?$'),
       concat('\'', app_id), app_id) AS app_id_cell,
    if(match(channel, '^[=+@\t\r-]') AND NOT match(channel, '^[+-]?[0-9]+([.][0-9]+)?$'),
       concat('\'', channel), channel) AS channel_cell,
    if(match(user_id, '^[=+@\t\r-]') AND NOT match(user_id, '^[+-]?[0-9]+([.][0-9]+)?$'),
       concat('\'', user_id), user_id) AS user_id_cell,
    kind AS billing_session_type,
    if(match(conversation_session_id, '^[=+@\t\r-]')
           AND NOT match(conversation_session_id, '^[+-]?[0-9]+([.][0-9]+)?$'),
       concat('\'', conversation_session_id), conversation_session_id) AS conversation_session_id_cell,
    if(isNull(conversation_started_at), NULL,
       concat(formatDateTime(assumeNotNull(conversation_started_at), '%Y-%m-%dT%H:%i:%S', 'UTC'), '.',
              leftPad(toString(toUnixTimestamp64Milli(assumeNotNull(conversation_started_at)) % 1000), 3, '0'), 'Z'))
        AS conversation_started_at,
    if(isNull(conversation_ended_at), NULL,
       concat(formatDateTime(assumeNotNull(conversation_ended_at), '%Y-%m-%dT%H:%i:%S', 'UTC'), '.',
              leftPad(toString(toUnixTimestamp64Milli(assumeNotNull(conversation_ended_at)) % 1000), 3, '0'), 'Z'))
        AS conversation_ended_at,
    if(match(billing_session_id, '^[=+@\t\r-]') AND NOT match(billing_session_id, '^[+-]?[0-9]+([.][0-9]+)?$'),
       concat('\'', billing_session_id), billing_session_id) AS billing_session_id_cell,
    concat(formatDateTime(started_at, '%Y-%m-%dT%H:%i:%S', 'UTC'), '.',
           leftPad(toString(toUnixTimestamp64Milli(started_at) % 1000), 3, '0'), 'Z') AS billing_session_started_at,
    concat(formatDateTime(ended_at, '%Y-%m-%dT%H:%i:%S', 'UTC'), '.',
           leftPad(toString(toUnixTimestamp64Milli(ended_at) % 1000), 3, '0'), 'Z') AS billing_session_ended_at,
    bot_ms,
    agent_ms,
    if(match(alert_id, '^[=+@\t\r-]') AND NOT match(alert_id, '^[+-]?[0-9]+([.][0-9]+)?$'),
       concat('\'', alert_id), alert_id) AS alert_id_cell
FROM {database:Identifier}.billing_sessions FINAL
WHERE account_id = {account:String}
    AND started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}
    AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    AND (billing_session_id, toStartOfFifteenMinutes(started_at)) NOT IN (
        SELECT billing_session_id, toStartOfFifteenMinutes(started_at)
        FROM {database:Identifier}.session_voids
        WHERE account_id = {account:String}
            AND started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}
    )
ORDER BY app_id, billing_session_id
SETTINGS max_threads = 1, max_block_size = 8192, output_format_parallel_formatting = 0,
    format_csv_null_representation = '', output_format_csv_crlf_end_of_line = 0

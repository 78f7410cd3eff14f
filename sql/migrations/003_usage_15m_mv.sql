-- Feeds usage_15m from every insert into billing_sessions.
--
-- conversations (R8) = billable conversation sessions that start in the bucket: the usage or
-- voice billing session with session_index 0 stands for its conversation session. Alerts have
-- no conversation session and never count here.
CREATE MATERIALIZED VIEW IF NOT EXISTS {database:Identifier}.usage_15m_mv
TO {database:Identifier}.usage_15m
AS SELECT
    account_id,
    app_id,
    toStartOfFifteenMinutes(started_at) AS bucket,
    kind,
    uniqExactState(billing_session_id) AS sessions,
    uniqExactStateIf(
        ifNull(conversation_session_id, ''),
        session_index = 0 AND kind IN ('usage', 'voice') AND conversation_session_id IS NOT NULL
    ) AS conversations
FROM {database:Identifier}.billing_sessions
GROUP BY account_id, app_id, bucket, kind

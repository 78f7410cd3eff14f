-- Extension requests with the operators' decisions, for `metering plans requests|extend|decline`
-- (across accounts: operators only). A request is pending until a grant or a decline names it.
--
-- Parameters: database Identifier; request Nullable(String) (NULL: all); account Nullable(String).
SELECT
    r.request_id AS request_id,
    r.account_id AS account_id,
    r.app_id AS app_id,
    r.days AS days,
    r.reason AS reason,
    r.user_id AS requested_by,
    r.occurred_at AS requested_at,
    if(d.decision = '', 'pending', if(d.decision = 'extension_granted', 'granted', 'declined')) AS status
FROM
(
    SELECT *
    FROM {database:Identifier}.extension_events FINAL
    WHERE
        type = 'extension_requested'
        AND ({request:Nullable(String)} IS NULL OR request_id = assumeNotNull({request:Nullable(String)}))
        AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
) AS r
LEFT JOIN
(
    SELECT app_id, request_id, argMin(type, (occurred_at, event_id)) AS decision
    FROM {database:Identifier}.extension_events FINAL
    WHERE type != 'extension_requested'
    GROUP BY app_id, request_id
) AS d ON d.app_id = r.app_id AND d.request_id = r.request_id
ORDER BY requested_at, request_id

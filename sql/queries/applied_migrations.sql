-- One row per applied version; two migrators racing on a server may both record a version,
-- so the first record wins.
SELECT
    version,
    argMin(name, applied_at) AS name,
    argMin(checksum, applied_at) AS checksum
FROM {database:Identifier}.schema_migrations
GROUP BY version
ORDER BY version

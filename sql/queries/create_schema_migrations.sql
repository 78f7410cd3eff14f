-- Which migrations ran, when, and the SHA-256 of the file that ran: migrate() refuses to go on
-- when an applied file has changed since, instead of leaving the schema and the code apart.
CREATE TABLE IF NOT EXISTS {database:Identifier}.schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version

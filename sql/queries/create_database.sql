-- Run by migrate() before anything else: the database name is a setting (default metering).
CREATE DATABASE IF NOT EXISTS {database:Identifier}

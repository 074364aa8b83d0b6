-- idempotent: the idempotency-record table (SQLite). Applied by idempotent_runtime::migrate.
CREATE TABLE IF NOT EXISTS idempotency_records (
    idempotency_key TEXT    NOT NULL PRIMARY KEY,
    operation       TEXT    NOT NULL,
    fingerprint     TEXT,
    status          TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    response        BLOB,
    expires_at_ms   INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at_ms);

-- idempotent: the idempotency-record table (PostgreSQL). Applied by idempotent_runtime::migrate.
CREATE TABLE IF NOT EXISTS idempotency_records (
    idempotency_key VARCHAR(64) PRIMARY KEY,  -- SHA-256 of (operation, scope, key parts), hex
    operation       TEXT        NOT NULL,     -- operation name, for diagnostics
    fingerprint     VARCHAR(64),              -- request fingerprint, hex; NULL when off
    status          VARCHAR(16) NOT NULL,     -- 'in_progress' | 'completed'
    owner           VARCHAR(64) NOT NULL,     -- owner token of the claim (compare-and-set)
    response        BYTEA,                    -- JSON of the stored response
    expires_at_ms   BIGINT      NOT NULL,     -- lease end (in progress) or TTL end (completed), server clock, Unix ms
    created_at_ms   BIGINT      NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at_ms);

-- idempotent: the idempotency-record table (MySQL / MariaDB). Applied by idempotent_runtime::migrate.
CREATE TABLE IF NOT EXISTS idempotency_records (
    idempotency_key VARCHAR(64) NOT NULL PRIMARY KEY,
    operation       TEXT        NOT NULL,
    fingerprint     VARCHAR(64) NULL,
    status          VARCHAR(16) NOT NULL,
    owner           VARCHAR(64) NOT NULL,
    response        LONGBLOB    NULL,
    expires_at_ms   BIGINT      NOT NULL,
    created_at_ms   BIGINT      NOT NULL,
    KEY idempotency_records_expires_at (expires_at_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

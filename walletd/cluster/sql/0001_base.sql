-- The cluster's durable state. Times come from the database's clock (cluster_now()), never a host's.

-- The database clock, shifted by a settable offset: 0 in production; the lease tests advance
-- it to expire leases without waiting. clock_timestamp(), not now(): now() is frozen at the start
-- of a transaction, and an expiry check must use the time the check runs.
CREATE TABLE cluster_clock (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    offset_seconds double precision NOT NULL DEFAULT 0
);
INSERT INTO cluster_clock DEFAULT VALUES;

CREATE FUNCTION cluster_now() RETURNS timestamptz
    LANGUAGE sql VOLATILE
    AS $$ SELECT clock_timestamp() + make_interval(secs => offset_seconds) FROM cluster_clock $$;

CREATE TABLE hosts (
    host_id text PRIMARY KEY,
    last_seen timestamptz NOT NULL,
    sessions integer NOT NULL DEFAULT 0 CHECK (sessions >= 0),
    max_sessions integer NOT NULL CHECK (max_sessions >= 0)
);

-- One row per escrow ever leased. A released lease keeps its row (host_id NULL) so that the
-- epoch, the fencing token, only ever grows.
CREATE TABLE leases (
    escrow_id text PRIMARY KEY,
    host_id text,
    epoch bigint NOT NULL CHECK (epoch > 0),
    expires_at timestamptz NOT NULL
);
CREATE INDEX leases_host ON leases(host_id);

-- The escrows, as walletd/state/sqlite_store.py keeps them in SQLite (JSON columns as jsonb).
CREATE TABLE escrows (
    escrow_id text PRIMARY KEY,
    state text NOT NULL,
    amount bigint NOT NULL,
    required_confirmations integer NOT NULL,
    multisig_address text,
    origin text NOT NULL,
    wallets jsonb NOT NULL,
    request_digest text NOT NULL,
    funding jsonb NOT NULL,
    payout jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX escrows_state ON escrows(state);

-- A payout's steps (intent, signed blob, submitted) on their own row, fenced like every write,
-- so that a new owner resubmits only the recorded blob. Not used yet.
CREATE TABLE payouts (
    escrow_id text PRIMARY KEY REFERENCES escrows(escrow_id),
    kind text NOT NULL,
    phase text NOT NULL,
    data jsonb NOT NULL,
    epoch bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

-- The single ordered event feed: seq comes from event_counter, updated in the writing
-- transaction, so seq order is commit order across hosts (a sequence can commit out of order).
CREATE TABLE event_counter (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq bigint NOT NULL DEFAULT 0
);
INSERT INTO event_counter DEFAULT VALUES;

CREATE TABLE events (
    seq bigint PRIMARY KEY,
    type text NOT NULL,
    escrow_id text,
    at timestamptz NOT NULL,
    data jsonb NOT NULL,
    host_id text,
    epoch bigint
);
CREATE INDEX events_escrow ON events(escrow_id);

-- Wallet files off the host: the last few stored versions of each role's keys and cache.
CREATE TABLE wallet_files (
    escrow_id text NOT NULL,
    role text NOT NULL,
    version bigint NOT NULL,
    epoch bigint NOT NULL,
    keys bytea NOT NULL,
    cache bytea NOT NULL,
    stored_at timestamptz NOT NULL,
    PRIMARY KEY (escrow_id, role, version)
);

-- Requests forwarded to the host whose session holds the escrow (issue 14: any host answers any
-- request). A row lives only as long as its request: the origin deletes it when it reads the
-- reply or gives up, and a periodic purge deletes what a crashed host left behind. The request
-- body (it may carry wallet passwords) is erased as soon as the owner claims the row.
CREATE TABLE forwarded_requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    escrow_id text,
    from_host text NOT NULL,
    to_host text NOT NULL,
    method text NOT NULL,
    path text NOT NULL,               -- percent-decoded, for logs and messages
    segments jsonb NOT NULL,          -- the path's segments, decoded one by one: what routes use
    query jsonb NOT NULL,
    body bytea,                       -- NULL once claimed
    created_at timestamptz NOT NULL DEFAULT cluster_now(),
    expires_at timestamptz NOT NULL,  -- the origin waits no longer: never claimed after this
    claimed_at timestamptz,
    status integer,
    content_type text,
    reply bytea,
    reply_headers jsonb,
    answered_at timestamptz
);
-- What an owner scans for: its unclaimed rows, oldest first.
CREATE INDEX forwarded_requests_unclaimed ON forwarded_requests (to_host, id)
    WHERE claimed_at IS NULL;
CREATE INDEX forwarded_requests_expires ON forwarded_requests (expires_at);

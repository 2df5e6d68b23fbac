-- The proofs of submitted payouts, as walletd/state/sqlite_store.py keeps them in SQLite: beside the
-- escrow row, not in its payout column, because the record is read, logged and shown everywhere
-- and the transaction key only through the proof endpoint. No foreign key, as in SQLite: a proof
-- is kept if its escrow row is deleted. The payout itself (intent, signed blob, submitted) stays in
-- escrows.payout, fenced with the escrow row.
CREATE TABLE payout_proofs (
    escrow_id text PRIMARY KEY,
    txid text NOT NULL,
    address text NOT NULL,
    tx_key text NOT NULL,
    proof text NOT NULL,
    stored_at timestamptz NOT NULL
);

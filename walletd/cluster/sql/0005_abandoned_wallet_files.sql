-- Wallet files of an abandoned creation (its record deleted in the same transaction): kept for
-- a post-mortem, never restored, exported or repaired from. A later escrow reusing the id starts
-- from its own files; its saves number on after these and push them out of the kept window.
ALTER TABLE wallet_files ADD COLUMN abandoned_at timestamptz;

-- Facts every host of the cluster must agree on, checked at each host's start-up.
-- vault_check: a keyed digest of a constant under the vault key (never the key): the wallets'
-- passwords come from that key, so a host with another key could open no escrow's wallets.
CREATE TABLE cluster_settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

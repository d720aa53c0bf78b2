-- entitlement-sync PostgreSQL schema, version 4: no table changes; refund and dispute
-- snapshots of the same instant fold in lifecycle order, as in the SQLite schema's
-- version 6 (migrations/0006_dispute_refund_ranks.sql). A store that holds any is
-- rebuilt once from its deliveries when a writer opens it.
INSERT INTO meta (key, value)
    SELECT 'needs_rebuild', 1 WHERE EXISTS (SELECT 1 FROM objects WHERE kind IN ('refund', 'dispute'))
    ON CONFLICT (key) DO UPDATE SET value = 1;

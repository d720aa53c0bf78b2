-- entitlement-sync schema, version 6: no table changes. Refund and dispute snapshots of
-- the same instant now fold in lifecycle order (docs/semantics.md, "Ordering"), so the
-- rank in their version keys changed: a store that holds any is rebuilt once from its
-- deliveries when the writer opens it (the rebuild's feed re-evaluation, cause
-- `rebuild`, records what the new order changes).
INSERT OR REPLACE INTO meta (key, value)
    SELECT 'needs_rebuild', 1
    WHERE EXISTS (SELECT 1 FROM objects WHERE kind IN ('refund', 'dispute'));

-- entitlement-sync schema, version 5: no table changes. The access rules changed
-- (docs/semantics.md): a listed refund counts from its own snapshot's version when that
-- is later than its created_at; each dispute of a payment counts on its own; a grant
-- an on_hold grace keeps is still denied by an expired license key, a refund or a
-- dispute. The answers the change feed recorded under the old rules are
-- evaluated again by the next write (cause `rebuild`), so the feed ends at the answers
-- these rules give.
INSERT OR REPLACE INTO meta (key, value)
    SELECT 'needs_evaluation', 1 WHERE EXISTS (SELECT 1 FROM objects WHERE kind = 'grant');

-- entitlement-sync PostgreSQL schema, version 3: no table changes; the access rules
-- changed, as in the SQLite schema's version 5 (migrations/0005_access_rules.sql). The
-- answers the change feed recorded under the old rules are evaluated again by the next
-- write (cause `rebuild`).
INSERT INTO meta (key, value)
    SELECT 'needs_evaluation', 1 WHERE EXISTS (SELECT 1 FROM objects WHERE kind = 'grant')
    ON CONFLICT (key) DO UPDATE SET value = 1;

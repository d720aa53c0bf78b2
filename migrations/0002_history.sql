-- entitlement-sync schema, version 2: the per-object fold history, overrides per
-- (delivery id, body hash). Applied by src/store/migrate.rs after schema.sql (version 1).

-- One row per distinct snapshot of an object, in key order: what the fold did with it
-- (a projection, rebuilt from `deliveries` + `overrides`). A
-- snapshot arriving out of order re-folds from its place only until the fold meets a
-- stored row again, so its cost does not grow with the object's history. The rows with a
-- `code` are the quarantine.
CREATE TABLE history (
    kind         TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    version_key  TEXT NOT NULL,             -- fold::VersionKey::encode(); sorts like the key
    delivery_seq INTEGER NOT NULL,          -- deliveries.seq of the representative delivery
    delivery_id  TEXT NOT NULL,             -- the smallest delivery id that carried it
    accepted     INTEGER NOT NULL,          -- an operator accepted it (`entsync accept`)
    starts_run   INTEGER NOT NULL,          -- applied, and the status changed here
    forced       INTEGER NOT NULL,          -- applied only because it was accepted
    code         TEXT,                      -- rejected: illegal_transition, ... (NULL: applied)
    reason       TEXT,
    from_state   TEXT,
    to_state     TEXT,
    rejection    TEXT,                      -- the typed fold::Rejection as JSON
    PRIMARY KEY (kind, object_id, version_key)
) WITHOUT ROWID;
CREATE INDEX history_rejected ON history (delivery_id) WHERE code IS NOT NULL;

DROP TABLE quarantine;

-- Overrides per (delivery id, body hash): accepting a delivery accepts the bytes it
-- carried, not whatever a later retry under the same webhook id carries.
CREATE TABLE overrides_v2 (
    delivery_id TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    accepted_at TEXT NOT NULL,
    PRIMARY KEY (delivery_id, body_sha256)
) WITHOUT ROWID;
INSERT OR IGNORE INTO overrides_v2 (delivery_id, body_sha256, accepted_at)
    SELECT o.delivery_id, d.body_sha256, o.accepted_at
      FROM overrides o JOIN deliveries d ON d.delivery_id = o.delivery_id;
DROP TABLE overrides;
ALTER TABLE overrides_v2 RENAME TO overrides;

-- The history replaces this lookup.
DROP INDEX deliveries_object;

-- The projections of a version-1 file lack their history: rebuild on open.
INSERT OR REPLACE INTO meta (key, value)
    SELECT 'needs_rebuild', 1 WHERE EXISTS (SELECT 1 FROM deliveries);

-- entitlement-sync schema, version 1.
-- Applied by src/store/migrate.rs; later versions append migrations, never edit this one.

-- Every verified delivery, raw, with its headers and what became of it on arrival.
-- This table alone (plus `overrides`) is enough to rebuild every projection.
CREATE TABLE deliveries (
    seq               INTEGER PRIMARY KEY,      -- arrival order
    delivery_id       TEXT NOT NULL,            -- webhook-id, or sha256:<hex> of a bare envelope
    body_sha256       TEXT NOT NULL,            -- a retry may carry a newer payload under the same id
    received_at       TEXT NOT NULL,            -- RFC 3339, UTC, microseconds
    webhook_timestamp TEXT,
    webhook_signature TEXT,
    body              BLOB NOT NULL,            -- raw bytes, exactly as signed
    event_type        TEXT,                     -- envelope `type` (NULL when malformed)
    event_at          TEXT,                     -- envelope `timestamp`
    object_kind       TEXT,                     -- grant, subscription, payment, ... (NULL: unhandled/malformed)
    object_id         TEXT,
    version_key       TEXT,                     -- fold::VersionKey::encode()
    outcome           TEXT NOT NULL,            -- applied|duplicate|stale|rejected|unhandled|malformed
    detail            TEXT                      -- parse error or rejection message on arrival
);
-- The idempotency key: the same webhook id with the same bytes is a duplicate. Dodo sends
-- the latest payload at delivery time, so a retry may carry a newer snapshot under the
-- same id: that one is kept and folded like any other.
CREATE UNIQUE INDEX deliveries_key ON deliveries (delivery_id, body_sha256);
CREATE INDEX deliveries_object ON deliveries (object_kind, object_id);

-- Operator overrides: quarantined snapshots applied by `entsync accept`.
CREATE TABLE overrides (
    delivery_id TEXT PRIMARY KEY,                -- applies to every snapshot of that webhook id
    accepted_at TEXT NOT NULL
);

-- The folded state of every object (a projection: rebuildable from deliveries).
-- `ref_id` is the object's second lookup key: a grant's entitlement, a refund's or
-- dispute's payment, a credit entry's credit entitlement, a payment's subscription.
CREATE TABLE objects (
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    customer_id TEXT,
    ref_id      TEXT,
    status      TEXT NOT NULL,
    as_of       TEXT NOT NULL,                  -- version instant of the state snapshot
    since       TEXT NOT NULL,                  -- when the current status began
    state_key   TEXT NOT NULL,                  -- version key of the state snapshot
    max_key     TEXT NOT NULL,                  -- newest version key in the history
    delivery_id TEXT NOT NULL,                  -- the delivery whose snapshot is the state
    body        TEXT NOT NULL,                  -- the state snapshot, as JSON
    seq         INTEGER NOT NULL                -- change counter value of the last write
);
-- A rowid table (not WITHOUT ROWID): rows carry a JSON body of several hundred bytes.
CREATE UNIQUE INDEX objects_key ON objects (kind, id);
CREATE INDEX objects_customer ON objects (customer_id, kind, ref_id);
CREATE INDEX objects_ref ON objects (kind, ref_id);
CREATE INDEX objects_seq ON objects (seq);

-- The quarantine: snapshots the fold currently rejects (a projection).
CREATE TABLE quarantine (
    delivery_id TEXT PRIMARY KEY,
    object_kind TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    version_key TEXT NOT NULL,
    code        TEXT NOT NULL,                  -- illegal_transition, forbidden_restoration, ...
    reason      TEXT NOT NULL,                  -- one line for operators
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL
);
CREATE INDEX quarantine_object ON quarantine (object_kind, object_id);

-- Counters: `seq` (last change), `epoch` (bumped by rebuild).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('seq', 0), ('epoch', 0);

-- entitlement-sync schema, version 3: the access-change feed. Applied by
-- src/store/migrate.rs after 0002_history.sql.

-- One row per change of a (customer, entitlement) pair's answer (`allowed`, `status`,
-- `reason`), written in the transaction that caused it. `seq` is the commit order: the
-- store has one writer at a time, so a reader that has seen seq N never later sees a
-- row at or below N. Rows are never deleted (a retention policy would have to keep
-- AUTOINCREMENT's guarantee).
CREATE TABLE changes (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id    TEXT NOT NULL,
    entitlement_id TEXT NOT NULL,
    allowed        INTEGER NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    grant_id       TEXT,
    prev_allowed   INTEGER NOT NULL,
    prev_status    TEXT NOT NULL,
    prev_reason    TEXT,
    at             TEXT NOT NULL,            -- RFC 3339, UTC: when the answer changed
    cause          TEXT NOT NULL,            -- delivery|time|operator|rebuild|reconcile
    delivery_id    TEXT,
    event_type     TEXT,
    detail         TEXT
);

-- The answer each pair last recorded in `changes` (pairs at `none` have no row), and the
-- next instant at which time alone may change it.
CREATE TABLE answers (
    customer_id    TEXT NOT NULL,
    entitlement_id TEXT NOT NULL,
    allowed        INTEGER NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    grant_id       TEXT,
    due_at         TEXT,                     -- RFC 3339, UTC; NULL: nothing due
    PRIMARY KEY (customer_id, entitlement_id)
) WITHOUT ROWID;
CREATE INDEX answers_due ON answers (due_at) WHERE due_at IS NOT NULL;

-- Which grants a subscription or a payment backs: the pairs a change of theirs touches.
CREATE INDEX objects_grant_subscription ON objects (json_extract(body, '$.subscription_id'))
    WHERE kind = 'grant';
CREATE INDEX objects_grant_payment ON objects (json_extract(body, '$.payment_id'))
    WHERE kind = 'grant';

-- Text settings: `policy` (the access policy the feed is computed under, JSON).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- `forward_cursor`: the last seq `serve --forward-url` delivered; `feed_clock`: the
-- latest instant (Unix microseconds) the feed evaluated answers at, so that its time
-- never runs backwards.
INSERT INTO meta (key, value) VALUES ('forward_cursor', 0), ('feed_clock', 0);

-- A store with grants but no feed yet: evaluate every pair once (cause `rebuild`), so
-- that the feed starts from the current answers.
INSERT OR REPLACE INTO meta (key, value)
    SELECT 'needs_evaluation', 1 WHERE EXISTS (SELECT 1 FROM objects WHERE kind = 'grant');

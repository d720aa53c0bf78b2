-- entitlement-sync schema, version 4: lookup indexes hold only the rows they are read
-- for. Applied by src/store/sqlite.rs after 0003_changes.sql.
--
-- SQLite writes a row's entry in every index of its table, and an UPDATE rewrites the
-- entry of every index on a column it sets. An entry nobody reads still dirties a page
-- per write: under `serve`'s webhook load these three cost ~1.8 of the ~10.7 pages
-- each delivery wrote to the log (docs/benchmarks.md, fifth sitting).

-- The due instants: almost every answer has none (NULL), and the NULL entries, in key
-- order, were a random page per recorded answer. Read only as `due_at IS NOT NULL`.
DROP INDEX answers_due;
CREATE INDEX answers_due ON answers (due_at) WHERE due_at IS NOT NULL;

-- A grant's ref_id is its entitlement; the grants of a pair are read through
-- objects_customer, never through this index (it serves a payment's refunds and
-- disputes). Readers say `kind <> 'grant'` so that SQLite may use it.
DROP INDEX objects_ref;
CREATE INDEX objects_ref ON objects (kind, ref_id) WHERE kind <> 'grant';

-- Only grants have these links.
DROP INDEX objects_grant_subscription;
CREATE INDEX objects_grant_subscription ON objects (grant_subscription_id)
    WHERE grant_subscription_id IS NOT NULL;
DROP INDEX objects_grant_payment;
CREATE INDEX objects_grant_payment ON objects (grant_payment_id)
    WHERE grant_payment_id IS NOT NULL;

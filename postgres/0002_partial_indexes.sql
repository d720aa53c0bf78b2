-- entitlement-sync PostgreSQL schema, version 2: objects_ref without the grants, as in
-- the SQLite schema's version 4 (migrations/0004_partial_indexes.sql). A grant's ref_id
-- is its entitlement, and its pairs are read through objects_customer; readers of this
-- index say `kind <> 'grant'`.
DROP INDEX objects_ref;
CREATE INDEX objects_ref ON objects (kind, ref_id) WHERE kind <> 'grant';

-- entitlement-sync PostgreSQL schema, version 5: no table changes; a grant snapshot that
-- leaves out the business an earlier one named, or a subscription snapshot that leaves
-- out its customer, is refused, as in the SQLite schema's version 7
-- (migrations/0007_identity_rule.sql). A store that took any grant or subscription
-- delivery without one is rebuilt once from its deliveries when a writer opens it; so is
-- one with a body PostgreSQL's JSON cannot read (the rebuild decides with the engine's
-- own parser).
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM deliveries
         WHERE (object_kind = 'grant'
                AND convert_from(body, 'UTF8')::jsonb -> 'data' ->> 'business_id' IS NULL)
            OR (object_kind = 'subscription'
                AND convert_from(body, 'UTF8')::jsonb -> 'data' -> 'customer' ->> 'customer_id' IS NULL)
    ) THEN
        INSERT INTO meta (key, value) VALUES ('needs_rebuild', 1)
            ON CONFLICT (key) DO UPDATE SET value = 1;
    END IF;
EXCEPTION WHEN others THEN
    INSERT INTO meta (key, value) VALUES ('needs_rebuild', 1)
        ON CONFLICT (key) DO UPDATE SET value = 1;
END
$$;

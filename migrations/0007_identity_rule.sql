-- entitlement-sync schema, version 7: no table changes. A grant snapshot that leaves out
-- the business an earlier one named, or a subscription snapshot that leaves out its
-- customer, is now refused (docs/semantics.md, grants), so that `A -> absent -> B` cannot
-- move the object. A store that took any grant or subscription delivery without one was
-- folded under the old rule: it is rebuilt once from its deliveries when the writer opens
-- it (the rebuild's feed re-evaluation, cause `rebuild`, records what changes). A body
-- SQLite's JSON cannot read counts as such a delivery: the rebuild decides with the
-- engine's own parser. (One pass over the deliveries, once.)
INSERT OR REPLACE INTO meta (key, value)
    SELECT 'needs_rebuild', 1
    WHERE EXISTS (
        SELECT 1 FROM deliveries
         WHERE object_kind IN ('grant', 'subscription')
           AND CASE
                   WHEN NOT json_valid(CAST(body AS TEXT)) THEN 1
                   WHEN object_kind = 'grant'
                       THEN json_extract(CAST(body AS TEXT), '$.data.business_id') IS NULL
                   ELSE json_extract(CAST(body AS TEXT), '$.data.customer.customer_id') IS NULL
               END
    );

-- The newest published taxonomy per product, kept from TaxonomyPublished so training fits with it
-- without calling the taxonomy service. `stream_seq` orders versions: a redelivered older event
-- never replaces a newer one.

CREATE TABLE published_taxonomies (
    product      TEXT PRIMARY KEY,
    version      TEXT NOT NULL,
    yaml         TEXT NOT NULL,
    stream_seq   BIGINT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

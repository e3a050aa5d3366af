-- What a confirmed label says beyond its class: the part it shows (photos of one part never
-- straddle a split), its severity, and where the defect is (boxes and polygons a labeler drew),
-- so a frozen dataset carries geometry for localisation and severity rules.
ALTER TABLE confirmed_labels
    ADD COLUMN product  TEXT  NOT NULL DEFAULT '',
    ADD COLUMN part_id  TEXT  NOT NULL DEFAULT '',
    ADD COLUMN severity TEXT  NOT NULL DEFAULT '',
    ADD COLUMN boxes    JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN polygons JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN source   TEXT  NOT NULL DEFAULT '',
    ADD COLUMN round    INTEGER NOT NULL DEFAULT 1;

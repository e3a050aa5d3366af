"""Taxonomy service: versioned, immutable, approved defect catalogues per product."""

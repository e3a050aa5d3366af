"""Labeling service: the ledger of every inspection result, review queues, two-pass labels, audit."""

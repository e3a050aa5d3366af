"""Data in and around the engine: manifest loading, leakage-free splits, dataset hygiene checks,
image decoding, per-class augmentation and the synthetic dataset generator."""

"""Training service: train, evaluate, gate, package and register inspection models."""

"""Transport of the inference service: bus consumers and the gRPC InferenceService."""

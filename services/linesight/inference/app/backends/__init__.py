"""Runtimes behind one interface: in-process onnxruntime, Triton (gRPC, HTTP, shared memory)."""

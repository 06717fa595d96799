"""Server-side tests (Python 3.11 environment: Flower, torch, transformers, ONNX Runtime)."""

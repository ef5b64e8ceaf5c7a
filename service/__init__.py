"""The online service: FastAPI ``/retrieve`` over ONNX query towers and faiss indexes (no torch)."""

"""Encode a corpus with the bundle's doc tower and build its faiss index (GPU when present)."""

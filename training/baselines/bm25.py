"""BM25 over doc texts with ``bm25s`` (a kept library): a baseline and DPR's hard-negative source."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BM25Index:
    """BM25 (Lucene variant, k1=1.5, b=0.75, English stopwords) over (doc id, text) pairs."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str]) -> None:
        import bm25s

        if len(doc_ids) != len(texts) or not doc_ids:
            raise ValueError("BM25Index needs as many (non-zero) ids as texts")
        self.doc_ids = list(doc_ids)
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        self.retriever.index(
            bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False
        )

    def search(self, queries: Sequence[str], k: int = 100) -> list[list[str]]:
        """Top-k doc ids per query (fewer when a query matches fewer docs)."""
        if not queries:
            return []
        k = min(k, len(self.doc_ids))
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        idx, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_i, row_s in zip(np.asarray(idx), np.asarray(scores), strict=True):
            out.append([self.doc_ids[int(i)] for i, s in zip(row_i, row_s, strict=True) if s > 0])
        return out

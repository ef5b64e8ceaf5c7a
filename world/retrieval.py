"""The pluggable retrieval stage: anything that maps (query text, user) to a ranked list of videos.

The world's ranking stage (pre-rank → rank → expose, ``world.funnel``) is the same whatever
retrieved the candidates, so two arms that differ only in their retriever differ only in retrieval.
``LexicalRetriever`` is the legacy stack's own retrieval (the one that produced the logged world);
a served model (the online A/B arms over HTTP) is another implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from world.legacy import LegacyStack


@runtime_checkable
class Retriever(Protocol):
    """Top-``k`` video ids (best first) for a query typed by a user (``user_id`` as in the logs)."""

    def retrieve(self, query: str, user_id: str, k: int) -> Sequence[str]: ...


@runtime_checkable
class IndexRetriever(Protocol):
    """A retriever that can answer in catalog row indices directly (skips the id lookup)."""

    def retrieve_indices(self, query: str, user_id: str, k: int) -> np.ndarray: ...


class LexicalRetriever:
    """The legacy stack's retrieval: BM25 over the video text (speech transcript included) plus what it
    learned from its own logs (popularity, query → category prior, click history). It does not depend
    on the user, and it sees only videos uploaded before the current day (``LegacyStack.start_day``)."""

    def __init__(self, stack: LegacyStack, video_ids: Sequence[str]) -> None:
        self.stack = stack
        self.video_ids = video_ids

    def retrieve_indices(self, query: str, user_id: str, k: int) -> np.ndarray:
        out: np.ndarray = self.stack.retrieve(query).vids[:k]
        return out

    def retrieve(self, query: str, user_id: str, k: int) -> list[str]:
        return [self.video_ids[i] for i in self.retrieve_indices(query, user_id, k).tolist()]


def candidates_of(
    retriever: Retriever | IndexRetriever,
    query: str,
    user_id: str,
    k: int,
    index_of: Mapping[str, int],
) -> np.ndarray:
    """Catalog indices of a retriever's top-``k`` (ids the catalog does not know are dropped)."""
    if isinstance(retriever, IndexRetriever):
        return np.asarray(retriever.retrieve_indices(query, user_id, k), np.int64)[:k]
    ids = retriever.retrieve(query, user_id, k)[:k]
    return np.fromiter((i for i in (index_of.get(v, -1) for v in ids) if i >= 0), np.int64)

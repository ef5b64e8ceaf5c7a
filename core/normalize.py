"""The ONE text normalisation used at training, indexing and serving time.

Its version is written into every bundle manifest; a bundle whose version differs from the running
code is refused, so the same query can never be normalised two ways (no train/serve skew).
"""

from __future__ import annotations

import re
import unicodedata

NORMALIZATION_VERSION = 1

_WS = re.compile(r"\s+")
# Control and format characters (zero-width joiners, BOMs) carry no meaning for retrieval.
_DROP_CATEGORIES = {"Cc", "Cf"}


def normalize_text(text: str) -> str:
    """NFKC, drop control/format characters, casefold, collapse whitespace, strip.

    Casefolding is lossless for the uncased MiniLM tokenizer and makes cache keys of "Cat Video"
    and "cat  video" equal.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if ch in "\t\n\r" else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DROP_CATEGORIES)
    return _WS.sub(" ", text.casefold()).strip()


def doc_text(title: str | None, body: str | None) -> str:
    """The text a document (video) is encoded from: title and body joined by one space."""
    parts = [p for p in (title, body) if p]
    return normalize_text(" ".join(parts))

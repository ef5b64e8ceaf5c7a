"""The legacy search stack that produced the logs: retrieve → pre-rank → rank → expose.

It is lexical (BM25 over title + caption + tags + the speech transcript that the published catalog
lacks, no typo correction, no synonyms) and it learns
only from what it showed: observed popularity (feed views + search clicks), a query → category
prior and a (query, video) click history, all updated at the end of each day from its own logs.
That feedback loop is the filter-bubble mechanism: the sense most users clicked yesterday is shown
more today, and a relevant video that was never shown never earns a click. Set the weights of
popularity, category prior and feedback to 0 for an unbiased (purely lexical) stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from world.catalog import Catalog
from world.config import LegacyKnobs

_TOKEN = re.compile(r"[a-z0-9]+")


def legacy_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def legacy_query_key(text: str) -> str:
    """The legacy stack's notion of "the same query": its sorted tokens (word order ignored)."""
    return " ".join(sorted(legacy_tokens(text)))


@dataclass
class Candidates:
    vids: np.ndarray  # int64, best first by the retrieval score
    score: np.ndarray  # retrieval score (lexical + popularity + category prior + feedback)
    feedback: np.ndarray  # the (query, video) click-history feature, reused by the ranker


class LegacyStack:
    def __init__(self, cat: Catalog, knobs: LegacyKnobs, *, k1: float = 1.2, b: float = 0.75) -> None:
        self.knobs = knobs
        self.n = len(cat)
        self.upload_ts = cat.upload_ts
        cats = sorted(set(cat.category))
        cidx = {c: i for i, c in enumerate(cats)}
        self.video_cat = np.array([cidx[c] for c in cat.category], dtype=np.int32)
        self.n_cat = len(cats)
        self._build_bm25(cat, k1, b)
        self.views = np.zeros(self.n, np.float64)
        self.fb_keys: np.ndarray = np.empty(0, np.int64)  # sorted (query key id * n + video)
        self.fb_clicks: np.ndarray = np.empty(0, np.float64)
        self.qkey_index: dict[str, int] = {}
        self.qc = np.zeros((0, self.n_cat), np.float64)  # clicks per (query key, category)
        self._pop_scale = 1.0
        self._mark = np.zeros(self.n, bool)
        self._acc = np.zeros(self.n, np.float64)
        self._lex_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lex_cached = 0
        self.lex_cache_entries = 5_000_000
        self._cache: dict[str, Candidates] = {}
        self._top_by_cat: list[np.ndarray] = [np.empty(0, np.int64)] * self.n_cat

    # ------------------------------------------------------------------ lexical index
    def _build_bm25(self, cat: Catalog, k1: float, b: float) -> None:
        vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        for i, (t, c, tags, asr) in enumerate(zip(cat.title, cat.caption, cat.tags, cat.asr, strict=True)):
            toks = legacy_tokens(f"{t} {c} {' '.join(tags)} {asr}")
            for w in toks:
                cols.append(vocab.setdefault(w, len(vocab)))
            rows.extend([i] * len(toks))
        tf = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (np.array(rows, np.int64), np.array(cols, np.int64))),
            shape=(self.n, len(vocab)),
        )
        tf.sum_duplicates()
        dl = np.asarray(tf.sum(axis=1)).ravel()
        avg = max(dl.mean(), 1.0)
        df = np.bincount(tf.indices, minlength=len(vocab))
        idf = np.log(1.0 + (self.n - df + 0.5) / (df + 0.5))
        tfc = tf.tocoo()
        denom = tfc.data + k1 * (1 - b + b * dl[tfc.row] / avg)
        w = idf[tfc.col] * tfc.data * (k1 + 1) / denom
        self.common_df = max(50, int(0.03 * self.n))
        self.bm25 = sp.csc_matrix((w.astype(np.float32), (tfc.row, tfc.col)), shape=tf.shape)
        self.vocab = vocab

    def lexical(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(videos, BM25 score) for every video sharing a selective token with the query (memoised:
        the index is static, and head queries come back every day)."""
        hit = self._lex_cache.get(text)
        if hit is not None:
            return hit
        out = self._lexical(text)
        if self._lex_cached + len(out[0]) <= self.lex_cache_entries:
            self._lex_cache[text] = out
            self._lex_cached += len(out[0])
        return out

    def _lexical(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = [
            self.vocab[w] for w in dict.fromkeys(legacy_tokens(text)) if w in self.vocab
        ]  # no set: its order varies by process
        if not ids:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        ip, ind, dat = self.bm25.indptr, self.bm25.indices, self.bm25.data
        if len(ids) == 1:  # one token: its posting list is already unique and sorted
            j = ids[0]
            return ind[ip[j] : ip[j + 1]].astype(np.int64), dat[ip[j] : ip[j + 1]].astype(np.float32)
        # like any inverted-index engine, candidates come from the selective terms ("how", "to" and
        # "video" alone retrieve nothing); common terms still add to the score of those candidates
        rare = [j for j in ids if ip[j + 1] - ip[j] <= self.common_df] or ids
        if len(rare) == 1:
            cand = ind[ip[rare[0]] : ip[rare[0] + 1]]
        else:  # union of the rare posting lists without sorting (a reusable marker)
            parts = []
            for j in rare:
                p = ind[ip[j] : ip[j + 1]]
                p = p[~self._mark[p]]
                self._mark[p] = True
                parts.append(p)
            cand = np.concatenate(parts)
            self._mark[cand] = False
        acc = self._acc  # a reusable dense accumulator; each posting list holds a doc at most once
        for j in ids:
            acc[ind[ip[j] : ip[j + 1]]] += dat[ip[j] : ip[j + 1]]
        scores = acc[cand].astype(np.float32)
        for j in ids:
            acc[ind[ip[j] : ip[j + 1]]] = 0.0
        return cand.astype(np.int64), scores

    # ------------------------------------------------------------------ learned state
    def qkey(self, text: str) -> int:
        k = legacy_query_key(text)
        if k not in self.qkey_index:
            self.qkey_index[k] = len(self.qkey_index)
            if len(self.qkey_index) > len(self.qc):
                grow = np.zeros((max(1024, len(self.qc)), self.n_cat))
                self.qc = np.vstack([self.qc, grow])
        return self.qkey_index[k]

    def start_day(self, day_start_ts: int) -> None:
        """Freeze today's features: what was observed before today, and what is uploaded by now."""
        self.available = self.upload_ts < day_start_ts
        self._cache = {}
        pop = np.log1p(self.views)
        self._pop_scale = max(float(np.quantile(pop, 0.99)), 1.0)
        self._pop = pop / self._pop_scale
        tops = []
        for c in range(self.n_cat):
            idx = np.flatnonzero((self.video_cat == c) & self.available)
            tops.append(idx[np.argsort(-self.views[idx], kind="stable")[:20]])
        self._top_by_cat = tops

    def _feedback(self, q: int, vids: np.ndarray) -> np.ndarray:
        if len(self.fb_keys) == 0:
            return np.zeros(len(vids))
        keys = q * self.n + vids
        pos = np.minimum(np.searchsorted(self.fb_keys, keys), len(self.fb_keys) - 1)
        clicks = np.where(self.fb_keys[pos] == keys, self.fb_clicks[pos], 0.0)
        out: np.ndarray = np.minimum(np.log1p(clicks) / np.log1p(10.0), 1.5)
        return out

    def _lex_of(self, text: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(lexical hits, BM25 scores, the query's best BM25 among videos available today)."""
        vids, lex = self.lexical(text)
        keep = self.available[vids]
        best = float(lex[keep].max()) if keep.any() else 0.0
        return vids, lex, best

    def features(self, text: str, vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(legacy score, click-history feature) of any candidate set for a query: what the legacy
        funnel knows about a (query, video) pair whichever retriever brought the video in: text
        match (BM25, normalised by the query's best available match), observed popularity, the
        learned query → category prior and the (query, video) click history."""
        q = self.qkey(text)
        hits, lex, best = self._lex_of(text)
        acc = self._acc  # scatter the query's BM25 scores, read the candidates', clear again
        acc[hits] = lex
        cand_lex = acc[vids].astype(np.float32)
        acc[hits] = 0.0
        return self._score(q, vids, cand_lex, best)

    def _score(self, q: int, vids: np.ndarray, lex: np.ndarray, best: float) -> tuple[np.ndarray, np.ndarray]:
        kn = self.knobs
        qc = self.qc[q]
        lexn = lex / max(best, 1e-6)
        prior = np.log((qc + 1.0) / (qc.sum() + self.n_cat)) - np.log(1.0 / self.n_cat)
        qcat = np.clip(prior[self.video_cat[vids]], -3.0, 3.0) / 3.0
        fb = self._feedback(q, vids)
        score = (
            kn.lexical_weight * lexn
            + kn.popularity_weight * self._pop[vids]
            + kn.query_category_weight * qcat
            + kn.feedback_weight * fb
        )
        return score, fb

    def retrieve(self, text: str) -> Candidates:
        """Top ``retrieve_k`` candidates for a query (call ``start_day`` first)."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        kn = self.knobs
        q = self.qkey(text)
        vids, lex = self.lexical(text)
        qc = self.qc[q]
        if qc.sum() > 0:  # the category it learned for this query also contributes its popular videos
            extra = self._top_by_cat[int(np.argmax(qc))]
            self._mark[vids] = True
            extra = extra[~self._mark[extra]]
            self._mark[vids] = False
            vids = np.concatenate([vids, extra])
            lex = np.concatenate([lex, np.zeros(len(extra), np.float32)])
        keep = self.available[vids]
        vids, lex = vids[keep], lex[keep]
        if len(vids) == 0:
            return Candidates(vids, np.empty(0), np.empty(0))
        score, fb = self._score(q, vids, lex, float(lex.max()))
        k = min(kn.retrieve_k, len(vids))
        top = np.argpartition(-score, k - 1)[:k] if k < len(vids) else np.arange(len(vids))
        top = top[np.argsort(-score[top], kind="stable")]
        out = Candidates(vids[top], score[top], fb[top])
        self._cache[text] = out
        return out

    def end_day(self, qkeys: np.ndarray, vids: np.ndarray, clicks: np.ndarray, feed_views: np.ndarray) -> None:
        """Learn from today's exposures: clicks per (query, video) and (query, category), views."""
        c = clicks.astype(bool)
        extra = np.bincount(vids[c], minlength=self.n) + np.bincount(feed_views, minlength=self.n)
        self.views = self.views + extra.astype(np.float64)
        if c.any():
            keys = qkeys[c].astype(np.int64) * self.n + vids[c]
            all_keys = np.concatenate([self.fb_keys, keys])
            all_vals = np.concatenate([self.fb_clicks, np.ones(len(keys))])
            uniq, inv = np.unique(all_keys, return_inverse=True)
            self.fb_keys = uniq.astype(np.int64)
            self.fb_clicks = np.bincount(inv, weights=all_vals).astype(np.float64)
            np.add.at(self.qc, (qkeys[c], self.video_cat[vids[c]]), 1.0)

    # ------------------------------------------------------------------ persistence
    def state_arrays(self) -> dict[str, np.ndarray]:
        """What the stack learned from its logs (popularity, click history, query → category), to save."""
        keys = sorted(self.qkey_index, key=self.qkey_index.__getitem__)
        return {
            "views": self.views,
            "fb_keys": self.fb_keys,
            "fb_clicks": self.fb_clicks,
            "qc": self.qc[: len(keys)],
            "qkeys": np.array(keys, dtype=object).astype(str),
        }

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore ``state_arrays`` (the catalog must be the same)."""
        if len(arrays["views"]) != self.n:
            raise ValueError(f"state is for {len(arrays['views'])} videos, the catalog has {self.n}")
        self.views = np.asarray(arrays["views"], np.float64)
        self.fb_keys = np.asarray(arrays["fb_keys"], np.int64)
        self.fb_clicks = np.asarray(arrays["fb_clicks"], np.float64)
        keys = [str(k) for k in arrays["qkeys"].tolist()]
        self.qkey_index = {k: i for i, k in enumerate(keys)}
        qc = np.asarray(arrays["qc"], np.float64)
        self.qc = np.vstack([qc, np.zeros((max(1024, len(qc)), self.n_cat))])
        self._cache = {}

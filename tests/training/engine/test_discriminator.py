"""θ: the calibration maths on synthetic scores, and a cheap fit on tiny real text with MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError
from training.engine.discriminator import (
    Discriminator,
    expected_calibration_error,
    fit_platt,
    roc_auc,
    sigmoid,
)


def test_platt_recovers_the_generating_sigmoid() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=20_000)
    y = (rng.random(z.shape) < sigmoid(2.0 * z - 1.0)).astype(int)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(2.0, abs=0.12)
    assert b == pytest.approx(-1.0, abs=0.08)


def test_platt_fixes_an_overconfident_score() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=10_000)
    y = (rng.random(z.shape) < sigmoid(z)).astype(int)
    over = 5.0 * z  # the same ranking, five times too confident
    raw_ece = expected_calibration_error(sigmoid(over), y)
    a, b = fit_platt(over[:5000], y[:5000])
    cal_ece = expected_calibration_error(sigmoid(a * over[5000:] + b), y[5000:])
    assert raw_ece > 0.1
    assert cal_ece < 0.03
    assert a == pytest.approx(0.2, abs=0.03)


def test_platt_is_finite_on_separable_data_and_refuses_one_class() -> None:
    a, b = fit_platt(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    assert np.isfinite(a) and np.isfinite(b) and a > 0
    with pytest.raises(CropsError, match="both"):
        fit_platt(np.array([0.1, 0.2]), np.array([1, 1]))


def test_ece_by_hand() -> None:
    # two bins: p=0.9 (2 items, 1 relevant → gap 0.4) and p=0.2 (2 items, 0 relevant → gap 0.2)
    p = np.array([0.9, 0.9, 0.2, 0.2])
    y = np.array([1, 0, 0, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # p = 1 lands in the last bin


def test_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    s = np.round(rng.normal(size=500), 1)  # ties on purpose
    y = (rng.random(500) < 0.3).astype(int)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))


def test_fit_vectors_on_synthetic_embeddings_is_calibrated() -> None:
    rng = np.random.default_rng(3)
    n_q, per_q, dim = 300, 10, 32
    qv = rng.normal(size=(n_q, dim))
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    groups = np.repeat(np.arange(n_q), per_q)
    q = qv[groups]
    y = (rng.random(len(q)) < 0.3).astype(int)
    noise = rng.normal(size=q.shape)
    d = np.where(y[:, None] == 1, q + 0.9 * noise / np.sqrt(dim), noise)  # relevant docs sit near q
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    disc = Discriminator()
    rep = disc.fit_vectors(q.astype(np.float32), d.astype(np.float32), y, groups)
    assert rep.auc_test > 0.95
    assert rep.ece_test < 0.05
    assert rep.n_train + rep.n_calib + rep.n_test == len(y)
    p = disc.prob_from_vectors(q.astype(np.float32), d.astype(np.float32))
    assert p.min() >= 0.0 and p.max() <= 1.0


def test_tiny_real_fit_save_load_and_embedding_cache(tmp_path: Path) -> None:
    topics = {
        "cat": ["a kitten plays with a ball of wool", "funny cats compilation", "cat grooming tips"],
        "guitar": ["acoustic guitar lesson for beginners", "electric guitar solo live", "how to tune a guitar"],
        "pasta": ["homemade pasta recipe", "spaghetti carbonara in ten minutes", "fresh ravioli dough"],
        "football": ["best goals of the season", "football training drills", "penalty kick highlights"],
        "rocket": ["rocket launch countdown", "how rockets reach orbit", "booster landing at sea"],
        "piano": ["piano tutorial for beginners", "chopin nocturne on piano", "piano chords explained"],
    }
    queries = {t: [f"{t} videos", f"best {t}", f"{t} clips"] for t in topics}
    qs, ds, ys = [], [], []
    for t, qlist in queries.items():
        for q in qlist:
            for t2, docs in topics.items():
                for doc in docs[:2]:
                    qs.append(q)
                    ds.append(doc)
                    ys.append(int(t == t2))
    cache = tmp_path / "emb.npz"
    disc = Discriminator(cache_path=cache, threads=1)
    rep = disc.fit(qs, ds, ys, seed=0)
    disc.cache.save()
    assert rep.auc_test > 0.8  # MiniLM separates these topics
    scores = disc.score(
        ["guitar lessons", "guitar lessons"], ["acoustic guitar lesson for beginners", "rocket launch countdown"]
    )
    assert scores[0] > scores[1]
    disc.save(tmp_path / "theta")
    # a fresh discriminator on the same cache embeds nothing (the encoder is never loaded)
    again = Discriminator(cache_path=cache).load(tmp_path / "theta")
    same = again.score(qs[:20], ds[:20])
    assert again._encoder is None
    np.testing.assert_allclose(same, disc.score(qs[:20], ds[:20]), rtol=1e-6)

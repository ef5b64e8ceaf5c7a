"""Named random streams: each part of the world draws from its own stream of the one seed, so changing
one mechanism's knob does not reshuffle the others (the catalog stays the same when clicks change)."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])

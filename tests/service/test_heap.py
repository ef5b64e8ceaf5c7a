"""gc.freeze after the bundles load: frozen cycles survive collections until a reload's refreeze."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import LiveServer, relabel_bundle

TOKEN = "heap-test-token"


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """These tests freeze pytest's own heap: give it back afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_server_freezes_its_heap_at_start_and_reclaims_cycles_after_a_reload(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.state.STOP_GRACE_S", 0.2)
    nxt = relabel_bundle(tiny_bundle, tmp_path / "next", "next-bundle", "n-")
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN, gc_freeze=True) as srv:
        info = srv.client.get("/info", headers={"x-crops-admin-token": TOKEN}).json()
        assert info["gc_frozen_objects"] > 0
        node = Node()  # garbage frozen together with the server's heap, as an old bundle's cycles would be
        alive = weakref.ref(node)
        gc.freeze()
        del node
        r = srv.client.post(
            "/admin/reload", json={"bundle": "default", "path": str(nxt)}, headers={"x-crops-admin-token": TOKEN}
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while alive() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive() is None, "the refreeze after the reload did not collect the frozen cycle"
        assert srv.retrieve("cat").json()["bundle_id"] == "next-bundle"
        assert srv.client.get("/info", headers={"x-crops-admin-token": TOKEN}).json()["gc_frozen_objects"] > 0


def test_in_process_test_servers_do_not_freeze_pytest(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        assert srv.client.get("/info", headers={"x-crops-admin-token": TOKEN}).json()["gc_frozen_objects"] == 0

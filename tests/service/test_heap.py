"""The serving heap: gc.freeze after the bundles load (frozen cycles survive collections until a
reload's refreeze); the glibc tunable that puts large allocations on transparent huge pages."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
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
        assert isinstance(info["huge_page_mib"], int) and info["huge_page_mib"] >= 0
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


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(
    not THP.is_file() or "[never]" in THP.read_text() or not Path("/proc/self/smaps_rollup").is_file(),
    reason="no transparent huge pages on this kernel",
)
def test_the_glibc_tunable_puts_large_allocations_on_huge_pages() -> None:
    """A process started with the image's GLIBC_TUNABLES gets its large allocations on huge pages;
    where the kernel only gives them on request (madvise), one started without it gets none."""
    from service.heap import HUGE_PAGES_TUNABLE

    # Plain malloc, as faiss and ONNX Runtime allocate (numpy asks for huge pages on its own).
    code = (
        "import ctypes; from service.heap import huge_page_mib; libc = ctypes.CDLL(None); "
        "libc.malloc.restype = ctypes.c_void_p; p = libc.malloc(64 << 20); ctypes.memset(p, 1, 64 << 20); "
        "print(huge_page_mib())"
    )

    def huge_mib(tunable: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunable:
            env["GLIBC_TUNABLES"] = tunable
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert huge_mib(HUGE_PAGES_TUNABLE) >= 32
    if "[madvise]" in THP.read_text():
        assert huge_mib(None) < 32

"""service.hotpath (the pure-ASGI POST /retrieve) against the FastAPI route it bypasses: for generated
bodies, both servers (real uvicorn, same bundle) answer with the same status, error kind and results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import LiveServer

TOKEN = "hotpath-admin"


@pytest.fixture(scope="module")
def pair(tiny_bundle: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    common: dict[str, Any] = {"bundle": tiny_bundle, "admin_token": TOKEN, "max_query_chars": 64, "cache": "memory"}
    with LiveServer(fast_path=True, **common) as fast, LiveServer(fast_path=False, **common) as ref:
        yield fast, ref


def _answer(srv: LiveServer, content: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    r = srv.client.post("/retrieve", content=content, headers=headers)
    data = r.json()
    if r.status_code == 200:
        return 200, ([c["video_id"] for c in data["candidates"]], data["arm"], r.headers["x-crops-arm"])
    return r.status_code, (data["error"], r.headers.get("retry-after"))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 205), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80), st.sampled_from(["cat video", "  ", "pasta", "x" * 65, "\u200b"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))
bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={"query": values, "user_id": values, "top_k": values, "request_id": values, "other": values},
    ),
    values,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, ctype=st.sampled_from(["application/json", "text/plain", None]))
def test_hotpath_answers_like_the_framework_route(
    pair: tuple[LiveServer, LiveServer], body: Any, ctype: str | None
) -> None:
    fast, ref = pair
    content = json.dumps(body).encode()
    headers = {"content-type": ctype} if ctype else {}
    assert _answer(fast, content, headers) == _answer(ref, content, headers)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b'{"query": "cat", "top_k": 1e400}', b"[]", b"null", b'{"query": "a\\ud800b"}'],
)
def test_malformed_bodies_agree(pair: tuple[LiveServer, LiveServer], content: bytes) -> None:
    fast, ref = pair
    headers = {"content-type": "application/json"}
    got, want = _answer(fast, content, headers), _answer(ref, content, headers)
    assert got == want
    assert got[0] in (200, 422)


def test_force_arm_and_auth_agree(pair: tuple[LiveServer, LiveServer]) -> None:
    fast, ref = pair
    cases = [
        {"x-crops-force-arm": "default"},
        {"x-crops-force-arm": "default", "x-crops-admin-token": "wrong"},
        {"x-crops-force-arm": "default", "authorization": f"Bearer {TOKEN}"},
        {"x-crops-force-arm": "nope", "x-crops-admin-token": TOKEN},
    ]
    for h in cases:
        headers = {"content-type": "application/json", **h}
        got = _answer(fast, b'{"query": "cat"}', headers)
        assert got == _answer(ref, b'{"query": "cat"}', headers), h
    assert [_answer(fast, b'{"query": "cat"}', {**c})[0] for c in cases] == [401, 401, 200, 422]


def test_oversized_body_is_refused_with_422(pair: tuple[LiveServer, LiveServer]) -> None:
    fast, _ = pair
    r = fast.client.post("/retrieve", content=b'{"query": "' + b"a" * (2 << 20) + b'"}')
    assert r.status_code == 422
    assert "larger than" in r.json()["message"]
    assert fast.metric("crops_errors_total", kind="invalid_input") >= 1

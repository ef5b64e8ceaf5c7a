"""The OpenAI-compatible client against a real local HTTP server (a FAKE LLM: FastAPI + uvicorn)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from core.errors import CropsError
from training.engine.llm_client import GenerationRequest, OpenAIChatClient, build_messages, parse_reply


class FakeLLMServer:
    """Speaks ``POST /v1/chat/completions``; the query text picks the behaviour under test."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.last_body: dict[str, Any] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.last_body = body
            user = body["messages"][-1]["content"]
            query = user.split("\n")[0].removeprefix("Search query: ")
            self.calls[query] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.05)
                return self._answer(query, self.calls[query])
            finally:
                self.in_flight -= 1

        self.app = app

    @staticmethod
    def _reply(content: str) -> JSONResponse:
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
            }
        )

    def _answer(self, query: str, n_call: int) -> Response:
        if query.startswith("flaky") and n_call <= 2:
            return JSONResponse({"error": "overloaded"}, status_code=503, headers={"Retry-After": "0"})
        if query.startswith("ratelimit") and n_call == 1:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0.01"})
        if query.startswith("down"):
            return JSONResponse({"error": "boom"}, status_code=500)
        if query.startswith("badrequest"):
            return JSONResponse({"error": "bad model"}, status_code=400)
        if query.startswith("badjson"):
            return self._reply("Sure! Here are some videos: 1. a video")
        if query.startswith("notarray"):
            return self._reply(json.dumps({"videos": ["a"]}))
        if query.startswith("mixed"):
            return self._reply(json.dumps(["a fine description", 3]))
        if query.startswith("nochoices"):
            return JSONResponse({"id": "x", "choices": []})
        if query.startswith("notjsonbody"):
            return Response("<html>gateway</html>", media_type="text/html")
        if query.startswith("fenced"):
            return self._reply('```json\n["fenced one", "fenced two"]\n```')
        return self._reply(json.dumps([f"{query} video number {i}" for i in range(3)]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[tuple[str, FakeLLMServer]]:
    fake = FakeLLMServer()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1", fake
    server.should_exit = True
    th.join(timeout=10)


def _client(url: str, tmp: Path | None, **kw: Any) -> OpenAIChatClient:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIChatClient(url, "fake-model", cache_dir=tmp, **kw)


def test_one_shot_prompt_and_parse(fake_llm: tuple[str, FakeLLMServer]) -> None:
    url, fake = fake_llm
    texts = _client(url, None).generate("jazz piano", "a pianist plays blues", 3)
    assert texts == [f"jazz piano video number {i}" for i in range(3)]
    sent = fake.last_body
    assert sent["model"] == "fake-model"
    assert "jazz piano" in sent["messages"][-1]["content"]
    assert "a pianist plays blues" in sent["messages"][-1]["content"]
    assert sent["messages"] == build_messages("jazz piano", "a pianist plays blues", 3)


def test_retries_with_backoff_then_success(fake_llm: tuple[str, FakeLLMServer]) -> None:
    url, fake = fake_llm
    res = _client(url, None).generate_many(
        [GenerationRequest("flaky a", "ex", 3), GenerationRequest("ratelimit a", "ex", 3)]
    )
    assert res[0].error is None and res[0].attempts == 3 and fake.calls["flaky a"] == 3
    assert res[1].error is None and res[1].attempts == 2 and len(res[1].texts) == 3


def test_gives_up_after_max_retries_and_4xx_is_not_retried(fake_llm: tuple[str, FakeLLMServer]) -> None:
    url, fake = fake_llm
    res = _client(url, None, max_retries=2).generate_many(
        [GenerationRequest("down a", "ex", 3), GenerationRequest("badrequest a", "ex", 3)]
    )
    assert res[0].error is not None and res[0].error.startswith("gave up after 3 attempts (HTTP 500)")
    assert fake.calls["down a"] == 3
    assert res[1].error is not None and res[1].error.startswith("HTTP 400") and fake.calls["badrequest a"] == 1
    with pytest.raises(CropsError, match="down b"):
        _client(url, None, max_retries=0).generate("down b", "ex", 3)


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    res = _client(url, None, max_retries=1).generate_many([GenerationRequest("q", "ex", 2)])[0]
    assert res.error is not None and "transport error" in res.error and res.attempts == 2


def test_cache_hits_cost_no_requests(fake_llm: tuple[str, FakeLLMServer], tmp_path: Path) -> None:
    url, fake = fake_llm
    first = _client(url, tmp_path).generate_many([GenerationRequest("cached q", "ex", 3)])[0]
    assert not first.cached and fake.calls["cached q"] == 1
    c2 = _client(url, tmp_path)
    again = c2.generate_many([GenerationRequest("cached q", "another example", 3)])[0]
    assert again.cached and again.texts == first.texts and c2.requests_sent == 0
    assert fake.calls["cached q"] == 1
    # another model or prompt version is another key
    other = OpenAIChatClient(url, "other-model", cache_dir=tmp_path, backoff_s=0.01)
    assert not other.generate_many([GenerationRequest("cached q", "ex", 3)])[0].cached
    assert fake.calls["cached q"] == 2


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("badjson x", "content is not JSON"),
        ("notarray x", "expected an array of strings"),
        ("mixed x", "non-string items"),
        ("nochoices x", "no 'choices'"),
        ("notjsonbody x", "malformed reply"),
    ],
)
def test_malformed_replies_are_rejected_with_a_reason_and_not_cached(
    fake_llm: tuple[str, FakeLLMServer], tmp_path: Path, query: str, reason: str
) -> None:
    url, fake = fake_llm
    client = _client(url, tmp_path)
    res = client.generate_many([GenerationRequest(query, "ex", 3)])[0]
    assert res.error is not None and res.error.startswith("malformed reply") and reason in res.error
    assert res.texts == [] and res.attempts == 1
    client.generate_many([GenerationRequest(query, "ex", 3)])
    assert fake.calls[query] == 2  # a rejected reply is not cached


def test_code_fences_are_tolerated(fake_llm: tuple[str, FakeLLMServer]) -> None:
    url, _ = fake_llm
    assert _client(url, None).generate("fenced q", "ex", 2) == ["fenced one", "fenced two"]


def test_concurrency_limit(fake_llm: tuple[str, FakeLLMServer]) -> None:
    url, fake = fake_llm
    fake.max_in_flight = 0
    reqs = [GenerationRequest(f"parallel {i}", "ex", 3) for i in range(8)]
    res = _client(url, None, concurrency=2).generate_many(reqs)
    assert all(r.error is None for r in res)
    assert [r.query for r in res] == [r.query for r in reqs]  # results in request order
    assert fake.max_in_flight == 2


def test_parse_reply_accepts_descriptions_object_and_several_choices() -> None:
    body = {
        "choices": [
            {"message": {"content": json.dumps({"descriptions": ["a", "b"]})}},
            {"message": {"content": json.dumps(["c"])}},
        ]
    }
    assert parse_reply(body) == ["a", "b", "c"]


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(CropsError, match="http"):
        OpenAIChatClient("localhost:8000", "m")

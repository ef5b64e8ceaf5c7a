"""P3 description sources behind one interface: an OpenAI-compatible chat-completions client
(vLLM, SGLang, Ollama, TGI, OpenAI all speak it) and an adapter for the world simulator's
``SimulatedLLM`` (the offline default).

The client sends the paper's one-shot prompt (the query and one known relevant video → ``n``
descriptions of other matching videos), runs at most ``concurrency`` requests at once, retries
transient failures (connection errors, timeouts, 429, 5xx) with exponential backoff (honouring
``Retry-After``), caches parsed replies on disk keyed by model + prompt version + query + n, and
rejects malformed replies with a reason instead of guessing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.atomic import atomic_write_json
from core.errors import CropsError, ErrorKind

log = logging.getLogger(__name__)

PROMPT_VERSION = "p3-oneshot-v1"

SYSTEM_PROMPT = (
    "You help a short-video search engine. Given a search query and one video that matches it, "
    "describe OTHER short videos that would also satisfy the query. Think of every meaning the "
    "query can have. Reply with a JSON array of strings and nothing else."
)


def build_messages(query: str, example_text: str, n: int) -> list[dict[str, str]]:
    """The one-shot prompt (paper §P3): query + one known relevant video → n new descriptions."""
    user = (
        f"Search query: {query}\n"
        f"A video that matches it: {example_text}\n"
        f"Write {n} descriptions (title and caption, one sentence each) of different videos that "
        f"also match the query. Do not repeat the example. Answer as a JSON array of {n} strings."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class MalformedReply(ValueError):
    """The server answered, but not with what the protocol and the prompt ask for."""


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_reply(body: Any) -> list[str]:
    """Descriptions from a chat-completions response body, or :class:`MalformedReply` saying why."""
    if not isinstance(body, dict):
        raise MalformedReply("response body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("response has no 'choices'")
    texts: list[str] = []
    for choice in choices:  # servers honouring "n" return several choices; each holds an array
        msg = choice.get("message") if isinstance(choice, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, str) or not content.strip():
            raise MalformedReply("choice has no message content")
        raw = content.strip()
        m = _FENCE.match(raw)
        if m:
            raw = m.group(1)
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise MalformedReply(f"content is not JSON ({exc.msg} at char {exc.pos})") from None
        if isinstance(parsed, dict) and isinstance(parsed.get("descriptions"), list):
            parsed = parsed["descriptions"]
        if not isinstance(parsed, list):
            raise MalformedReply(f"content is JSON {type(parsed).__name__}, expected an array of strings")
        if not all(isinstance(x, str) for x in parsed):
            raise MalformedReply("content array holds non-string items")
        texts.extend(parsed)
    return texts


@dataclass
class GenerationResult:
    query: str
    texts: list[str] = field(default_factory=list)
    error: str | None = None  # why nothing usable came back (malformed reply, gave up after retries)
    cached: bool = False
    attempts: int = 0
    # Simulated sources only (evaluation, never filtering): whether each text fits the senses the
    # LLM read in the query, and what it is about, (topic id, intent id, modifier), to grade it
    # against the world's truth afterwards.
    truth_ok: list[bool] | None = None
    about: list[tuple[int, int, str | None]] | None = None


@dataclass
class GenerationRequest:
    query: str
    example_text: str
    n: int


class DescriptionSource(Protocol):
    """Anything that writes P3 descriptions: a real LLM endpoint or the world's simulated one."""

    model: str
    prompt_version: str

    def generate(self, query: str, example_text: str, n: int) -> list[str]: ...

    def generate_many(
        self, requests: Sequence[GenerationRequest], progress: bool = False
    ) -> list[GenerationResult]: ...


class ReplyCache:
    """One JSON file per key under ``root`` (written atomically); only parsed replies are stored."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @staticmethod
    def key(model: str, prompt_version: str, query: str, n: int) -> str:
        return hashlib.sha256(json.dumps([model, prompt_version, query, n]).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[str] | None:
        if self.root is None:
            return None
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            texts = json.loads(p.read_text())["texts"]
        except (ValueError, KeyError):
            return None  # a damaged entry is a miss, not a crash
        return [str(t) for t in texts]

    def get_entry(self, key: str) -> dict[str, Any] | None:
        if self.root is None or not self._path(key).is_file():
            return None
        try:
            entry = json.loads(self._path(key).read_text())
        except ValueError:
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("texts"), list) else None

    def put(self, key: str, query: str, texts: list[str], **extra: Any) -> None:
        if self.root is not None:
            atomic_write_json(self._path(key), {"query": query, "texts": texts, **extra})


class OpenAIChatClient:
    """Async OpenAI-compatible ``/chat/completions`` client with bounded concurrency and retries."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        cache_dir: Path | None = None,
        concurrency: int = 8,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        timeout_s: float = 60.0,
        temperature: float = 0.7,
        max_tokens: int = 512,
        prompt_version: str = PROMPT_VERSION,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise CropsError(ErrorKind.INVALID_INPUT, f"--llm-url must be an http(s) URL, got {base_url!r}")
        if concurrency < 1 or max_retries < 0:
            raise CropsError(ErrorKind.INVALID_INPUT, "concurrency must be >= 1 and retries >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.cache = ReplyCache(cache_dir)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt_version = prompt_version
        self.requests_sent = 0  # HTTP requests actually made (cache hits make none)

    @property
    def endpoint(self) -> str:
        # Accept both ".../v1" and a full ".../chat/completions" URL.
        return self.base_url if self.base_url.endswith("/chat/completions") else f"{self.base_url}/chat/completions"

    def _payload(self, req: GenerationRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": build_messages(req.query, req.example_text, req.n),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return float(min(self.backoff_s * (2**attempt), self.max_backoff_s))

    async def _one(self, client: Any, sem: asyncio.Semaphore, req: GenerationRequest) -> GenerationResult:
        import httpx

        key = self.cache.key(self.model, self.prompt_version, req.query, req.n)
        hit = self.cache.get(key)
        if hit is not None:
            return GenerationResult(req.query, hit, cached=True)
        res = GenerationResult(req.query)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with sem:
            for attempt in range(self.max_retries + 1):
                res.attempts = attempt + 1
                retry_after: str | None = None
                try:
                    self.requests_sent += 1
                    resp = await client.post(self.endpoint, json=self._payload(req), headers=headers)
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    res.error = f"transport error: {type(exc).__name__}"
                else:
                    if resp.status_code == 429 or resp.status_code >= 500:
                        res.error = f"HTTP {resp.status_code}"
                        retry_after = resp.headers.get("retry-after")
                    elif resp.status_code >= 400:
                        res.error = f"HTTP {resp.status_code}: {resp.text[:200]}"  # our request is wrong
                        return res
                    else:
                        try:
                            res.texts = parse_reply(resp.json())
                        except (MalformedReply, ValueError) as exc:
                            res.error = f"malformed reply: {exc}"
                            return res
                        res.error = None
                        self.cache.put(key, req.query, res.texts)
                        return res
                if attempt < self.max_retries:
                    await asyncio.sleep(self._delay(attempt, retry_after))
            res.error = f"gave up after {res.attempts} attempts ({res.error})"
            return res

    async def agenerate_many(
        self, requests: Sequence[GenerationRequest], progress: bool = False
    ) -> list[GenerationResult]:
        import httpx
        from tqdm import tqdm

        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            tasks = [asyncio.ensure_future(self._one(client, sem, r)) for r in requests]
            with tqdm(total=len(tasks), desc="P3 llm", disable=not progress, unit="query") as bar:
                for fut in asyncio.as_completed(tasks):
                    await fut
                    bar.update(1)
            return [t.result() for t in tasks]

    def generate_many(self, requests: Sequence[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        return asyncio.run(self.agenerate_many(requests, progress=progress))

    def generate(self, query: str, example_text: str, n: int) -> list[str]:
        res = self.generate_many([GenerationRequest(query, example_text, n)])[0]
        if res.error:
            raise CropsError(ErrorKind.BACKEND, f"LLM request for {query!r} failed: {res.error}")
        return res.texts


class SimulatedSource:
    """Adapter: the world simulator's knowledge source (a SIMULATION of an LLM) behind the same
    interface and cache as the HTTP client. ``impl`` has ``generate(query, example_text, n)``; when
    it also has ``generate_labeled`` (the world's ``SimulatedLLM``), whether each description is a
    hallucination is kept for the report's P3 precision (never used to filter)."""

    def __init__(self, impl: Any, *, model: str | None = None, cache_dir: Path | None = None) -> None:
        self.impl = impl
        self.model = model or str(getattr(impl, "model", "simulated-llm"))
        self.prompt_version = f"{PROMPT_VERSION}+{getattr(impl, 'prompt_version', 'sim')}"
        self.cache = ReplyCache(cache_dir)

    def generate(self, query: str, example_text: str, n: int) -> list[str]:
        return [str(t) for t in self.impl.generate(query, example_text, n)]

    def _labeled(
        self, query: str, example_text: str, n: int
    ) -> tuple[list[str], list[bool] | None, list[tuple[int, int, str | None]] | None]:
        if hasattr(self.impl, "generate_labeled"):
            gen = self.impl.generate_labeled(query, example_text, n)
            described = all(hasattr(g, "topic_id") and hasattr(g, "intent_id") for g in gen)
            about = (
                [(int(g.topic_id), int(g.intent_id), getattr(g, "modifier", None)) for g in gen] if described else None
            )
            return [str(g.text) for g in gen], [not bool(g.is_error) for g in gen], about
        return self.generate(query, example_text, n), None, None

    def generate_many(self, requests: Sequence[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        from tqdm import tqdm

        out = []
        for r in tqdm(requests, desc="P3 simulated llm", disable=not progress, unit="query", mininterval=2.0):
            key = self.cache.key(self.model, self.prompt_version, r.query, r.n)
            hit = self.cache.get_entry(key)
            if hit is not None:
                about = hit.get("about")
                out.append(
                    GenerationResult(r.query, [str(t) for t in hit["texts"]], cached=True, truth_ok=hit.get("truth_ok"),
                                     about=[(int(a[0]), int(a[1]), a[2]) for a in about] if about else None)
                )
                continue
            try:
                texts, ok, about = self._labeled(r.query, r.example_text, r.n)
            except Exception as exc:  # a simulator bug must not kill a long mining run
                out.append(GenerationResult(r.query, error=f"simulated LLM failed: {exc}"))
                continue
            self.cache.put(key, r.query, texts, truth_ok=ok, about=about)
            out.append(GenerationResult(r.query, texts, attempts=1, truth_ok=ok, about=about))
        return out


def iter_errors(results: Iterable[GenerationResult]) -> dict[str, int]:
    """Count failures by reason prefix (for the report)."""
    counts: dict[str, int] = {}
    for r in results:
        if r.error:
            reason = r.error.split(":")[0] if not r.error.startswith("gave up") else "gave up"
            counts[reason] = counts.get(reason, 0) + 1
    return counts

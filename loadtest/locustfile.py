"""Locust scenarios for the retrieval service: a realistic query mix against /retrieve and /retrieve/batch.

Interactive use (web UI, or ``--headless``)::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --crops-world WORLD --crops-rate 400

The headless runner with the report and SLO verdict is ``python -m loadtest.run`` (it drives these
same user classes through locust's library API).

Each simulated user sends its requests as a Poisson process of ``rate_per_user`` (``loadtest.pacing``), so
``users`` independent callers add up to Poisson arrivals at the target rate: an open model up to the
point where an answer takes longer than a user's next scheduled send. Not ``constant_throughput``:
users spawned at a fixed spawn rate keep the phase they were spawned with, so with 40 users paced at
100 ms and spawned every 125 ms the whole load arrived in 4 synchronised bursts of 10 every 25 ms
(``tests/loadtest/test_pacing.py``), which measured the service's answer to bursts instead of to the
rate (``docs/results/loadtest_quiet.md``).
Queries are drawn by frequency from the world's query log (head/torso/tail) or the embedded
default mix; user ids come from the log (so A/B arms split as in production) or a large pool.
"""

from __future__ import annotations

import json
import random
from typing import Any, ClassVar

from locust import FastHttpUser, events, task

from loadtest.pacing import PoissonPacer
from loadtest.querymix import QueryMix, load_mix


def _json_or_fail(resp: Any) -> dict[str, Any] | None:
    """The decoded body of a 200 answer; otherwise mark the request failed (shed on 503) and return None."""
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}")
        resp.request_meta["context"]["arm"] = "(shed)" if resp.status_code == 503 else "(failed)"
        return None
    try:
        data = json.loads(resp.content or b"{}")
    except ValueError:
        resp.failure("invalid JSON")
        return None
    return data if isinstance(data, dict) else {}


class RetrieveUser(FastHttpUser):
    """One caller (a ranking service replica): mostly single /retrieve calls, some batches."""

    # Set by the runner (or by the command-line options below) before users spawn.
    mix: ClassVar[QueryMix | None] = None
    rate_per_user: ClassVar[float] = 1.0
    batch_share: ClassVar[float] = 0.05
    batch_size: ClassVar[int] = 8
    top_k: ClassVar[int] = 100
    seed: ClassVar[int] = 0
    _spawned: ClassVar[int] = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.mix is None:
            cls.mix = load_mix(None)
        cls._spawned += 1
        self.rng = random.Random(cls.seed * 1_000_003 + cls._spawned)
        self._pace = PoissonPacer(cls.rate_per_user, self.rng)

    def wait_time(self) -> float:
        return self._pace()

    @task
    def search(self) -> None:
        if self.batch_share > 0 and self.rng.random() < self.batch_share:
            self.retrieve_batch()
        else:
            self.retrieve_one()

    def _item(self) -> tuple[dict[str, Any], str]:
        assert self.mix is not None
        q, bucket = self.mix.sample(self.rng)
        return {"query": q, "user_id": self.mix.sample_user(self.rng), "top_k": self.top_k}, bucket

    def retrieve_one(self) -> None:
        body, bucket = self._item()
        with self.client.post(
            "/retrieve", json=body, name="/retrieve", catch_response=True, context={"bucket": bucket}
        ) as resp:
            # No JSON decoding here: the generator shares the cores with the service, and parsing 100
            # candidates per answer would cost it more than the rest of its work. The arm comes from
            # the x-crops-arm header; the body is checked for a 200 with at least one candidate.
            ctx = resp.request_meta["context"]
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                ctx["arm"] = "(shed)" if resp.status_code == 503 else "(failed)"
                return
            content = resp.content or b""
            if b'"video_id"' not in content:
                resp.failure("no candidates")  # the catalog always has matches: empty is a bug
            ctx["arm"] = str(resp.headers.get("x-crops-arm") or "?")

    def retrieve_batch(self) -> None:
        items = [self._item()[0] for _ in range(self.batch_size)]
        with self.client.post(
            "/retrieve/batch",
            json={"items": items},
            name="/retrieve/batch",
            catch_response=True,
            context={"bucket": "batch"},
        ) as resp:
            data = _json_or_fail(resp)
            if data is None:
                return
            results = data.get("results", [])
            if len(results) != len(items):
                resp.failure(f"batch returned {len(results)} results for {len(items)} requests")
            arms = {str(r.get("arm", "?")) for r in results if isinstance(r, dict)}
            resp.request_meta["context"]["arm"] = arms.pop() if len(arms) == 1 else "mixed"


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--crops-world", default="", help="world folder (its search log gives the query mix)")
    parser.add_argument("--crops-rate", type=float, default=0.0, help="target requests/s over all users")
    parser.add_argument("--crops-batch-share", type=float, default=0.05)
    parser.add_argument("--crops-top-k", type=int, default=100)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _configure(environment: Any, **_: Any) -> None:
    opts = getattr(environment, "parsed_options", None)
    if opts is None or not hasattr(opts, "crops_world"):
        return  # driven by loadtest.run, which configures the class itself
    RetrieveUser.mix = load_mix(opts.crops_world or None)
    users = max(1, int(getattr(opts, "num_users", 1) or 1))
    if opts.crops_rate > 0:
        RetrieveUser.rate_per_user = opts.crops_rate / users
    RetrieveUser.batch_share = opts.crops_batch_share
    RetrieveUser.top_k = opts.crops_top_k

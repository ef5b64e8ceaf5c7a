"""``crops online``: the world's users search through the live service and behave as the world says.

Built on the world's step API (``world.Platform``), one simulated day at a time:

1. the world opens the day's search sessions (who searches, with which true need, the first query
   phrased with the world's typos, slang and synonyms);
2. every pending query goes to ``POST /retrieve`` with the user's id, so the service's A/B router
   picks the arm; the arm's top-100 is handed to ``Platform.respond``: the world's ranking stage (the
   legacy pre-rank/rank) orders it, the top ``expose_k`` are shown, the user examines, clicks, plays
   and may reformulate, and a reformulation is the session's next real ``/retrieve``;
3. one feedback event per exposed video goes to ``POST /feedback``; so do the feed items the world
   shows each user around the search (``Platform.feed_around``);
4. ``Platform.end_day``: the ranking stage learns from the day, as it did in the logged world.

Determinism: each session draws from its own stream (world seed, ``seed``, day, session) and the
ranking stage changes only at the end of a day, so the outcome does not depend on how the bounded
concurrency interleaves sessions (one thread calls the world; only the HTTP waits overlap).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write_bytes, atomic_write_json
from core.errors import CropsError, ErrorKind
from core.feedback import FeedbackEvent
from online.client import ServiceClient
from world import Platform, RequestOutcome, SearchSession
from world.platform import LONG_PLAY_SHARE
from world.population import DAY_MS
from world.relevance import VideoIndex, grade_need

log = logging.getLogger("online.driver")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the progress bar

Need3 = tuple[int, int, int]


@dataclass
class OnlineWorld:
    """A built world's platform plus what the report needs from its truth and its logs."""

    dir: Path
    platform: Platform
    vindex: VideoIndex
    ever_exposed: np.ndarray  # bool per video: search exposed it at least once (world logs + online days)
    _rel_cache: dict[Need3, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, world_dir: Path) -> OnlineWorld:
        if not (world_dir / "world.json").is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{world_dir} is not a world folder (no world.json)")
        p = Platform.from_world(world_dir)
        ever = np.zeros(len(p.video_ids), bool)
        for part in ("train", "test"):
            t = pq.read_table(world_dir / part / "search_log.parquet", columns=["video_id", "stage"])
            t = t.filter(pa.compute.equal(t.column("stage"), "exposed"))
            idx = [p.index_of.get(v, -1) for v in t.column("video_id").unique().to_pylist()]
            ever[[i for i in idx if i >= 0]] = True
        return cls(world_dir, p, VideoIndex.build(p.cat), ever)

    def relevant(self, need: Need3) -> np.ndarray:
        """Catalog indices of the videos of grade ≥ 2 for a need (topic, intent, modifier)."""
        hit = self._rel_cache.get(need)
        if hit is None:
            vids, grades = grade_need(self.platform.cat, self.vindex, [need])
            hit = np.sort(vids[grades >= 2])
            self._rel_cache[need] = hit
        return hit

    def save_state(self, path: Path) -> None:
        """The ranking stage's learned state and the ever-exposed mask (a resumed loop restores them)."""
        arrays = {f"legacy_{k}": v for k, v in self.platform.legacy.state_arrays().items()}
        arrays["ever_exposed"] = self.ever_exposed
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(path, buf.getvalue())

    def load_state(self, path: Path) -> None:
        with np.load(path) as z:
            self.platform.legacy.load_state_arrays({k[7:]: z[k] for k in z.files if k.startswith("legacy_")})
            self.ever_exposed = z["ever_exposed"].copy()


REQUEST_FIELDS = ("request_id", "session_id", "user_id", "arm", "bundle_id", "day", "step", "query", "ts_ms",
                  "returned", "exposures", "clicks", "long_plays", "never_exposed", "reformulated", "recall",
                  "n_relevant", "need_topic", "need_intent", "need_modifier")
SESSION_FIELDS = ("session_id", "user_id", "arm", "day", "requests", "success")


@dataclass
class DayResult:
    requests: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    exposed_pairs: dict[str, set[tuple[Need3, int]]]  # per arm: (need, relevant video) exposed to that need
    needs: dict[str, set[Need3]]  # per arm: needs searched
    feedback_events: int  # accepted by the service
    feedback_dropped: int  # refused by the service (counted there too)
    seconds: float


def _events(o: RequestOutcome, arm: str) -> list[FeedbackEvent]:
    r = o.request
    return [FeedbackEvent(request_id=r.request_id, user_id=r.user_id, session_id=r.session_id, arm=arm,
                          source="search", query=r.query, video_id=i.video_id, position=i.position,
                          ts_ms=r.ts + 1_000 * i.position, clicked=i.clicked, play_ms=i.play_ms,
                          long_play=i.long_play)
            for i in o.exposed]


async def run_day(
    w: OnlineWorld,
    client: ServiceClient,
    *,
    day: int,
    sessions: int,
    seed: int,
    run_id: str,
    concurrency: int,
    progress: Callable[[int, int], None] | None = None,
) -> DayResult:
    """Serve online day ``day`` (0 = the first day after the world's logs) of ``sessions`` sessions."""
    t0 = time.perf_counter()
    p = w.platform
    d = p.first_online_day + day
    p.start_day(d)
    start = p.cfg.start_ts_ms + d * DAY_MS
    opened = p.open_sessions(d, sessions, seed=seed, prefix=f"{run_id}-s")
    K = p.cfg.legacy.retrieve_k
    ever_at_start = w.ever_exposed.copy()
    outcomes: list[RequestOutcome] = []
    requests: list[dict[str, Any]] = []
    sess_rows: list[dict[str, Any]] = []
    arm_of: dict[str, str] = {}
    exposed_pairs: dict[str, set[tuple[Need3, int]]] = {}
    needs: dict[str, set[Need3]] = {}
    done = 0
    sem = asyncio.Semaphore(concurrency)
    accepted0, dropped0 = client.feedback_posted, client.feedback_dropped

    async def one(s: SearchSession) -> None:
        nonlocal done
        need = (s.need.topic, s.need.intent, s.need.modifier)
        rel = w.relevant(need)
        rel = rel[p.cat.upload_ts[rel] < start]
        arm = "?"
        async with sem:
            while s.pending is not None:
                req = s.pending
                got = await client.retrieve(req.query, req.user_id, req.request_id, top_k=K)
                arm = got.arm
                [o] = p.respond([s], [got.video_ids])
                outcomes.append(o)
                events = _events(o, arm)
                await client.feedback(events)
                top = np.fromiter((p.index_of.get(v, -1) for v in got.video_ids), np.int64)
                hits = int(np.isin(top[top >= 0], rel).sum()) if len(rel) else 0
                vids = np.array([p.index_of[i.video_id] for i in o.exposed], np.int64)
                exposed_pairs.setdefault(arm, set()).update(
                    (need, p.index_of[i.video_id]) for i in o.exposed if i.grade >= 2)
                needs.setdefault(arm, set()).add(need)
                requests.append({
                    "request_id": req.request_id, "session_id": s.session_id, "user_id": req.user_id, "arm": arm,
                    "bundle_id": got.bundle_id, "day": day, "step": req.round, "query": req.query, "ts_ms": req.ts,
                    "returned": len(got.video_ids), "exposures": len(o.exposed), "clicks": o.clicks,
                    "long_plays": o.long_plays, "never_exposed": int((~ever_at_start[vids]).sum()),
                    "reformulated": o.follow_up is not None,
                    "recall": hits / min(len(rel), K) if len(rel) else float("nan"), "n_relevant": len(rel),
                    "need_topic": need[0], "need_intent": need[1], "need_modifier": need[2],
                })
        arm_of[s.user_id] = arm
        sess_rows.append({"session_id": s.session_id, "user_id": s.user_id, "arm": arm, "day": day,
                          "requests": len(s.outcomes), "success": s.satisfied})
        done += 1
        if progress is not None:
            progress(done, len(opened))

    await asyncio.gather(*(one(s) for s in opened))
    feed = p.feed_around(opened)
    feed_events = [
        FeedbackEvent(request_id=f"{run_id}-feed-d{day}-{j}", user_id=e.user_id, session_id=e.session_id,
                      arm=arm_of.get(e.user_id), source="feed", query=None, video_id=e.video_id, position=None,
                      ts_ms=e.ts, clicked=e.action != "skip", play_ms=e.play_ms,
                      long_play=e.action != "skip" and e.play_ms >= LONG_PLAY_SHARE * int(
                          p.cat.duration_ms[p.index_of[e.video_id]]))
        for j, e in enumerate(feed)
    ]
    await client.feedback(feed_events)
    await client.flush()
    p.end_day(sorted(outcomes, key=lambda o: o.request.request_id), feed)  # the ranking stage learns
    for o in outcomes:
        for i in o.exposed:
            w.ever_exposed[p.index_of[i.video_id]] = True
    requests.sort(key=lambda r: (r["ts_ms"], r["request_id"]))
    sess_rows.sort(key=lambda r: r["session_id"])
    return DayResult(requests, sess_rows, exposed_pairs, needs, client.feedback_posted - accepted0,
                     client.feedback_dropped - dropped0, time.perf_counter() - t0)


def write_tables(out: Path, requests: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> None:
    for name, rows, fields in (("requests", requests, REQUEST_FIELDS), ("sessions", sessions, SESSION_FIELDS)):
        table = pa.Table.from_pylist([{k: r[k] for k in fields} for r in rows]) if rows else pa.table(
            {k: pa.array([], pa.string()) for k in fields})
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        atomic_write_bytes(out / f"{name}.parquet", buf.getvalue().to_pybytes())


def bubble_share(w: OnlineWorld, exposed: set[tuple[tuple[int, int, int], int]],
                 needs: set[tuple[int, int, int]]) -> float | None:
    """Mean over ``needs`` of the share of the need's relevant videos (grade ≥ 2) in ``exposed``."""
    shares = []
    by_need: dict[tuple[int, int, int], set[int]] = {}
    for need, v in exposed:
        by_need.setdefault(need, set()).add(v)
    for need in needs:
        rel = w.relevant(need)
        if len(rel):
            shares.append(len(by_need.get(need, set())) / len(rel))
    return float(np.mean(shares)) if shares else None


def run_online(
    world_dir: Path,
    url: str,
    out: Path,
    *,
    sessions: int,
    days: int = 1,
    seed: int = 0,
    concurrency: int = 8,
    run_id: str = "r0",
    progress: bool = True,
) -> dict[str, Any]:
    """``days`` simulated days of ``sessions`` each through the service; writes requests/sessions tables."""
    from tqdm import tqdm

    w = OnlineWorld.load(world_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_req: list[dict[str, Any]] = []
    all_sess: list[dict[str, Any]] = []
    n_events = dropped = 0

    async def main() -> None:
        nonlocal n_events, dropped
        async with ServiceClient(url, concurrency=concurrency) as client:
            for d in range(days):
                bar = tqdm(total=sessions, desc=f"day {d} sessions", unit="sess", disable=not progress,
                           mininterval=2.0)

                def tick(done: int, total: int, bar: Any = bar) -> None:
                    bar.update(1)

                res = await run_day(w, client, day=d, sessions=sessions, seed=seed, run_id=run_id,
                                    concurrency=concurrency, progress=tick)
                bar.close()
                all_req.extend(res.requests)
                all_sess.extend(res.sessions)
                n_events += res.feedback_events
                dropped += res.feedback_dropped

    asyncio.run(main())
    write_tables(out, all_req, all_sess)
    summary = {"world": str(world_dir), "service": url, "sessions_per_day": sessions, "days": days, "seed": seed,
               "run_id": run_id, "requests": len(all_req), "feedback_events": n_events,
               "feedback_dropped_by_service": dropped}
    atomic_write_json(out / "run.json", summary)
    return summary


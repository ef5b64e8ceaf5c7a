"""``crops online``: the world's users search through the live service and behave as the world says.

One simulated day at a time:

1. the world draws the day's search sessions (who searches, with which true need) and phrases each
   first query (its own code: ``world.population``, ``world.funnel``);
2. every query goes to ``POST /retrieve`` with the user's id, so the service's A/B router picks the
   arm; its top-100 goes through the world's ranking stage (the legacy pre-rank/rank models,
   ``world.funnel.rank_expose_click``), the top ``expose_k`` are shown, users examine, click and
   play; unsatisfied users reformulate (``world.funnel.follow_ups``) and the follow-up is a real
   ``/retrieve`` of the same session;
3. one feedback event per exposed video goes to ``POST /feedback``; so do the day's feed items
   (the world's recommender: interest-driven plus leaning toward the day's search intents);
4. at the end of the day the legacy ranking stage learns from the day's clicks and feed views, as it
   does in the logged world (the same ``LegacyStack.end_day``).

Determinism: each session draws from its own generator (``seed``, day, session), the ranking
stage's state is frozen for the day, and request ids are derived from them, so the outcome does not
depend on how the bounded concurrency interleaves sessions. The world's legacy state at the start is
rebuilt by replaying the world's logged clicks and feed views day by day through ``end_day``.
"""

from __future__ import annotations

import asyncio
import json
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
from world.build import read_world_info
from world.catalog import Catalog, catalog_for
from world.config import WorldConfig
from world.funnel import (
    ACTIONS,
    Draws,
    FeedSampler,
    background_feed,
    candidate_matrix,
    follow_ups,
    leaning_feed,
    phrase_first,
    rank_expose_click,
)
from world.legacy import LegacyStack
from world.ontology import Ontology, load_ontology
from world.population import DAY_MS, Users, make_sessions
from world.queries import QueryBook
from world.relevance import VideoIndex, grade_need
from world.seeding import stream
from world.textgen import QueryKnobs

log = logging.getLogger("online.driver")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the progress bar

#: A play counts as long when it covers this share of the video (or LONG_PLAY_MS, whichever is less).
LONG_PLAY_SHARE = 0.5
LONG_PLAY_MS = 30_000
STAGE_EXPOSED = 2


def long_play(play_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
    """Long play: the user watched at least half the video or 30 s of it."""
    return (play_ms > 0) & (play_ms >= np.minimum(LONG_PLAY_SHARE * duration_ms, LONG_PLAY_MS))


@dataclass
class OnlineWorld:
    """A built world, loaded for online sessions: its catalog, users, query phrasing and ranking stage."""

    dir: Path
    info: dict[str, Any]
    cfg: WorldConfig
    seed: int
    cat: Catalog
    onto: Ontology
    users: Users
    user_ids: list[str]
    book: QueryBook
    legacy: LegacyStack
    feed: FeedSampler
    index_of: dict[str, int]
    vindex: VideoIndex
    ever_exposed: np.ndarray  # bool per video: exposed in search at least once (world logs + online days)
    _rel_cache: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, world_dir: Path, *, progress: bool = False) -> OnlineWorld:
        if not (world_dir / "world.json").is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{world_dir} is not a world folder (no world.json)")
        info = read_world_info(world_dir)
        cfg = WorldConfig.model_validate(info["config"])
        seed = int(info["seed"])
        onto = load_ontology()
        cat = catalog_for(cfg, seed, source=info.get("catalog_source"), progress=progress)
        logged = pq.read_table(world_dir / "videos.parquet", columns=["video_id"]).column("video_id").to_pylist()
        if logged != list(cat.video_id):
            raise CropsError(ErrorKind.INCOMPATIBLE, f"{world_dir}: its catalog does not match its config and seed")
        from world.population import make_users

        users = make_users(onto, cfg, seed)
        q = cfg.queries
        book = QueryBook(onto, QueryKnobs(q.typo_prob, q.slang_prob, q.synonym_query_prob, q.name_query_prob))
        legacy = LegacyStack(cat, cfg.legacy)
        index_of = {v: i for i, v in enumerate(cat.video_id)}
        ever = _replay(world_dir, cfg, legacy, index_of, len(cat))
        return cls(world_dir, info, cfg, seed, cat, onto, users, users.ids, book, legacy,
                   FeedSampler(cat, onto, cfg, seed), index_of, VideoIndex.build(cat), ever)

    def relevant(self, topic: int, intent: int, modifier: int) -> np.ndarray:
        """Catalog indices of the videos of grade ≥ 2 for a need (sorted)."""
        key = (topic, intent, modifier)
        hit = self._rel_cache.get(key)
        if hit is None:
            vids, grades = grade_need(self.cat, self.vindex, [key])
            hit = np.sort(vids[grades >= 2])
            self._rel_cache[key] = hit
        return hit

    def day_start(self, online_day: int) -> int:
        return int(self.cfg.start_ts_ms + (self.cfg.days + online_day) * DAY_MS)


def _replay(world_dir: Path, cfg: WorldConfig, legacy: LegacyStack, index_of: dict[str, int], n: int) -> np.ndarray:
    """Teach the legacy stack what it learned while the world was logged; returns which videos
    search ever exposed."""
    ever = np.zeros(n, bool)
    tables = [(pq.read_table(world_dir / p / "search_log.parquet", columns=["ts", "query", "video_id", "stage",
                                                                             "clicked"]),
               pq.read_table(world_dir / p / "rec_log.parquet", columns=["ts", "video_id", "action"]))
              for p in ("train", "test")]
    replay_logs(cfg, legacy, index_of, ever, tables)
    return ever


def replay_logs(cfg: WorldConfig, legacy: LegacyStack, index_of: dict[str, int], ever: np.ndarray,
                tables: list[tuple[pa.Table, pa.Table]], before_ts: int | None = None) -> None:
    """Replay logged days through the legacy stack's own ``end_day`` (clicks per query and video,
    feed views), oldest day first, and mark exposed videos in ``ever``. Rows at or after
    ``before_ts`` are ignored (a resumed loop replays only the days it finished)."""
    per_day: dict[int, dict[str, list[np.ndarray]]] = {}
    for search, rec in tables:
        s = search.to_pydict()
        ts = np.array(s["ts"], np.int64)
        keep = ts < before_ts if before_ts is not None else np.ones(len(ts), bool)
        vids = np.array([index_of.get(v, -1) for v in s["video_id"]], np.int64)
        exposed = np.array([x == "exposed" for x in s["stage"]], bool) & keep & (vids >= 0)
        ever[vids[exposed]] = True
        clicked = np.array(s["clicked"], bool) & (vids >= 0) & keep
        days = (ts - cfg.start_ts_ms) // DAY_MS
        for i in np.flatnonzero(clicked):
            d = per_day.setdefault(int(days[i]), {"q": [], "v": [], "f": []})
            d["q"].append(np.array([legacy.qkey(s["query"][i])]))
            d["v"].append(np.array([vids[i]]))
        r = rec.to_pydict()
        rts = np.array(r["ts"], np.int64)
        rv = np.array([index_of.get(v, -1) for v in r["video_id"]], np.int64)
        views = (np.array(r["action"]) != "skip") & (rv >= 0)
        if before_ts is not None:
            views &= rts < before_ts
        rdays = (rts - cfg.start_ts_ms) // DAY_MS
        for day in np.unique(rdays[views]):
            per_day.setdefault(int(day), {"q": [], "v": [], "f": []})["f"].append(rv[views & (rdays == day)])
    for day in sorted(per_day):
        legacy.start_day(cfg.start_ts_ms + day * DAY_MS)
        d = per_day[day]
        qk = np.concatenate(d["q"]) if d["q"] else np.empty(0, np.int64)
        v = np.concatenate(d["v"]) if d["v"] else np.empty(0, np.int64)
        f = np.concatenate(d["f"]) if d["f"] else np.empty(0, np.int64)
        legacy.end_day(qk, v, np.ones(len(v), bool), f)


REQUEST_FIELDS = ("request_id", "session_id", "user_id", "arm", "bundle_id", "day", "step", "query", "ts_ms",
                  "returned", "exposures", "clicks", "long_plays", "never_exposed", "reformulated", "recall",
                  "n_relevant", "need_topic", "need_intent", "need_modifier")
SESSION_FIELDS = ("session_id", "user_id", "arm", "day", "requests", "success")


@dataclass
class DayResult:
    requests: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    exposed_pairs: dict[str, set[tuple[tuple[int, int, int], int]]]  # per arm: (need, video) relevant exposed
    needs: dict[str, set[tuple[int, int, int]]]  # per arm: needs searched
    feedback_events: int
    seconds: float


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
    """Serve one simulated day of ``sessions`` search sessions (plus the day's feed) through the service."""
    t0 = time.perf_counter()
    cfg, cat = w.cfg, w.cat
    start = w.day_start(day)
    w.legacy.start_day(start)
    # who searches for what: the world's session model (its own streams: a world day after the logs)
    s = make_sessions(w.onto, w.users, cfg, w.seed, cfg.days + day, sessions)
    gens = [stream(seed, f"online-{run_id}-{day}-{i}") for i in range(len(s))]
    ever_at_start = w.ever_exposed.copy()
    requests: list[dict[str, Any]] = []
    sess_rows: list[dict[str, Any]] = [{} for _ in range(len(s))]
    clicked_q: list[int] = []
    clicked_v: list[int] = []
    exposed_today: list[np.ndarray] = []
    user_arm: dict[int, str] = {}
    exposed_pairs: dict[str, set[tuple[tuple[int, int, int], int]]] = {}
    needs: dict[str, set[tuple[int, int, int]]] = {}
    n_events = 0
    done = 0
    sem = asyncio.Semaphore(concurrency)
    K = cfg.legacy.retrieve_k

    async def one(i: int) -> None:
        nonlocal n_events, done
        g = gens[i]
        draws = Draws([g])
        rows = np.array([i])
        sids, surfs = phrase_first(w.book, w.onto, s, rows, g.random((1, 10)))
        text, surf = w.book.strings[sids[0]], surfs[0]
        level = np.array([int(s.level[i])], np.int64)
        ts = np.array([int(s.start_ts[i])], np.int64)
        user = w.user_ids[int(s.user[i])]
        need = (int(s.topic[i]), int(s.intent[i]), int(s.modifier[i]))
        rel = w.relevant(*need)
        rel = rel[cat.upload_ts[rel] < start]
        sid = f"{run_id}-d{day}-s{i}"
        success = False
        step = 0
        arm = "?"
        async with sem:
            while True:
                rid = f"{sid}-q{step}"
                got = await client.retrieve(text, user, rid, top_k=K)
                arm = got.arm
                idx = np.fromiter((w.index_of.get(v, -1) for v in got.video_ids), np.int64)
                V = candidate_matrix([idx[idx >= 0]], K)
                sv = rank_expose_click(w.legacy, cat, cfg, [text], V, np.array([need[0]]), np.array([need[1]]),
                                       np.array([need[2]]), draws, book=w.book)
                ex = sv.stage == STAGE_EXPOSED
                vids, pos, clk, play, grade = sv.vid[ex], sv.pos[ex], sv.click[ex], sv.play[ex], sv.grade[ex]
                lp = long_play(play, cat.duration_ms[vids]) & clk
                events = [
                    FeedbackEvent(request_id=rid, user_id=user, session_id=sid, arm=arm, source="search",
                                  query=text, video_id=cat.video_id[int(v)], position=int(p),
                                  ts_ms=int(ts[0]) + 1_000 * int(p), clicked=bool(c), play_ms=int(pl),
                                  long_play=bool(lpp))
                    for v, p, c, pl, lpp in zip(vids, pos, clk, play, lp, strict=True)
                ]
                await client.feedback(events)
                n_events += len(events)
                satisfied = bool(sv.satisfied[0]) if len(sv.satisfied) else False
                success = success or satisfied
                top = idx[idx >= 0]
                hits = int(np.isin(top, rel).sum()) if len(rel) else 0
                relevant_exposed = vids[grade >= 2]
                exposed_pairs.setdefault(arm, set()).update((need, int(v)) for v in relevant_exposed)
                needs.setdefault(arm, set()).add(need)
                fu = follow_ups(w.book, w.onto, cfg, draws, s, rows, level, [surf], ts, sv.satisfied
                                if len(sv.satisfied) else np.array([False]))
                last = step == cfg.clicks.max_reformulations or len(fu.idx) == 0
                requests.append({
                    "request_id": rid, "session_id": sid, "user_id": user, "arm": arm, "bundle_id": got.bundle_id,
                    "day": day, "step": step, "query": text, "ts_ms": int(ts[0]), "returned": len(got.video_ids),
                    "exposures": len(vids), "clicks": int(clk.sum()), "long_plays": int(lp.sum()),
                    "never_exposed": int((~ever_at_start[vids]).sum()), "reformulated": not last,
                    "recall": hits / min(len(rel), K) if len(rel) else float("nan"), "n_relevant": len(rel),
                    "need_topic": need[0], "need_intent": need[1], "need_modifier": need[2],
                })
                clicked_q.extend([w.legacy.qkey(text)] * int(clk.sum()))
                clicked_v.extend(int(v) for v in vids[clk])
                exposed_today.append(vids)
                if last:
                    break
                text, surf = w.book.strings[int(fu.sid[0])], fu.surface[0]
                level, ts = fu.level, fu.ts
                step += 1
        user_arm[int(s.user[i])] = arm
        sess_rows[i] = {"session_id": sid, "user_id": user, "arm": arm, "day": day, "requests": step + 1,
                        "success": success}
        done += 1
        if progress is not None:
            progress(done, len(s))

    await asyncio.gather(*(one(i) for i in range(len(s))))
    # the feed: leaning toward today's search intents (per-session streams) and interest-driven background
    lean_draws = Draws([stream(seed, f"online-lean-{run_id}-{day}-{i}") for i in range(len(s))])
    lu, lts, lvid, lact, lplay, _ = leaning_feed(cat, w.users, w.feed, cfg, s, lean_draws)
    n_bg = round(cfg.rec.per_request * len(requests))
    bu, bts, bvid, bact, bplay = background_feed(cat, w.users, w.feed, cfg, seed * 7919 + 17, cfg.days + day, n_bg)
    fu_, fts, fvid = np.concatenate([lu, bu]), np.concatenate([lts, bts]), np.concatenate([lvid, bvid])
    fact, fplay = np.concatenate([lact, bact]), np.concatenate([lplay, bplay])
    skip = ACTIONS.index("skip")
    feed_events = [
        FeedbackEvent(request_id=f"{run_id}-feed-d{day}-{j}", user_id=w.user_ids[int(u)], session_id=None,
                      arm=user_arm.get(int(u)), source="feed", query=None, video_id=cat.video_id[int(v)],
                      position=None, ts_ms=int(t), clicked=bool(a != skip), play_ms=int(p),
                      long_play=bool(a != skip and long_play(np.array([p]), cat.duration_ms[[int(v)]])[0]))
        for j, (u, t, v, a, p) in enumerate(zip(fu_, fts, fvid, fact, fplay, strict=True))
    ]
    await client.feedback(feed_events)
    await client.flush()
    n_events += len(feed_events)
    # the ranking stage learns from the day, as in the logged world
    w.legacy.end_day(np.array(clicked_q, np.int64), np.array(clicked_v, np.int64), np.ones(len(clicked_v), bool),
                     fvid[fact != skip])
    if exposed_today:
        w.ever_exposed[np.concatenate(exposed_today)] = True
    requests.sort(key=lambda r: (r["ts_ms"], r["request_id"]))
    return DayResult(requests, sess_rows, exposed_pairs, needs, n_events, time.perf_counter() - t0)


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
        rel = w.relevant(*need)
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
    n_events = 0

    async def main() -> None:
        nonlocal n_events
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

    asyncio.run(main())
    write_tables(out, all_req, all_sess)
    summary = {"world": str(world_dir), "service": url, "sessions_per_day": sessions, "days": days, "seed": seed,
               "run_id": run_id, "requests": len(all_req), "feedback_events": n_events}
    atomic_write_json(out / "run.json", summary)
    return summary


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())

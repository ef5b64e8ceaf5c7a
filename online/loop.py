"""``crops loop``: retraining rounds on the served A/B arms.

Each round serves both arms to the world's users for one simulated day through a live ``crops
serve`` (``online.driver``), collects the service's own logs (exposure JSONL ⨝ ``/feedback`` JSONL,
``crops exposures``), and retrains each arm on its own traffic plus the world's logged history:

- treatment: the CroPS recipe (``crops mine`` P0–P3 with HLA levels, ``crops train --method crops``);
- control: clicks only (the same mined log stages without P1–P3: ``crops train --method fs-lr``);

then exports, builds the index and hot-reloads the arm (``POST /admin/reload``), and the next round
starts. Stages run as ``crops`` subprocesses (they exchange artifacts, never imports). Every step
writes its output atomically and is skipped on a rerun when its output exists, so a killed loop
resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from core.errors import CropsError, ErrorKind
from core.logs import REC_LOG, SEARCH_LOG
from online.client import ServiceClient
from online.driver import OnlineWorld, bubble_share, run_day, write_tables
from online.report import build_report, markdown, plot

log = logging.getLogger("online.loop")

ARMS = {"control": "fs-lr", "treatment": "crops"}


def _crops(args: list[str], log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run one ``crops`` stage; on failure, stop with its last error line."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_file.open("ab") as fh:
        fh.write(f"$ crops {' '.join(args)}\n".encode())
        fh.flush()
        r = subprocess.run([sys.executable, "-m", "crops", *args], stdout=fh, stderr=subprocess.STDOUT,
                           env={**os.environ, **(env or {})}, check=False)
    if r.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise CropsError(ErrorKind.BACKEND, f"crops {args[0]} failed ({log_file}): {tail[0]}")
    log.info("crops %s: %.0f s", args[0], time.perf_counter() - t0)


def _parquet(table: pa.Table, path: Path) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


class Service:
    """``crops serve`` with the two arms, JSONL exposure and feedback logs, and an admin token."""

    def __init__(self, out: Path, bundles: dict[str, Path], port: int, workers: int = 1,
                 redis_url: str | None = None, cache: str = "memory") -> None:
        self.out = out
        self.exposures = out / "service" / "exposures.jsonl"
        self.feedback = out / "service" / "feedback.jsonl"
        self.token = secrets.token_hex(16)
        cfg = {"version": 1, "bundles": {a: str(p.resolve()) for a, p in bundles.items()},
               "defaults": {"bundle": "control"},
               "layers": [{"name": "model", "experiments": [{"name": "loop", "arms": {
                   "control": {"weight": 50, "bundle": "control"},
                   "treatment": {"weight": 50, "bundle": "treatment"}}}]}]}
        self.config = out / "service" / "ab.json"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, json.dumps(cfg, indent=2))
        self.port, self.workers, self.redis_url, self.cache = port, workers, redis_url, cache
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "CROPS_EXPOSURE_JSONL": str(self.exposures), "CROPS_FEEDBACK_JSONL": str(self.feedback),
               "CROPS_ADMIN_TOKEN": self.token, "CROPS_CACHE": self.cache}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if self.redis_url:
            env["CROPS_REDIS_URL"] = self.redis_url
            env["CROPS_REDIS_PREFIX"] = f"crops-online-{self.port}:"
        log_fh = (self.out / "service" / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crops", "serve", "--experiments", str(self.config), "--port", str(self.port),
             "--workers", str(self.workers)], env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise CropsError(ErrorKind.BACKEND, f"crops serve exited ({self.out / 'service' / 'serve.log'})")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise CropsError(ErrorKind.BACKEND, "crops serve did not become ready in 300 s")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def reload(self, arm: str, bundle: Path) -> None:
        async def go() -> None:
            async with ServiceClient(self.url) as c:
                await c.reload(arm, str(bundle.resolve()), admin_token=self.token)

        asyncio.run(go())

    def wait_logged(self, n_requests: int, n_events: int, timeout_s: float = 120.0) -> None:
        """Until the exposure and feedback logs hold what was served and posted (their writers are
        asynchronous)."""
        deadline = time.time() + timeout_s
        for path, want in ((self.exposures, n_requests), (self.feedback, n_events)):
            while True:
                n = 0
                if path.is_file():
                    with path.open("rb") as fh:
                        n = sum(1 for line in fh if line.strip())
                if n >= want:
                    break
                if time.time() > deadline:
                    raise CropsError(ErrorKind.BACKEND, f"{path} holds {n} of {want} records after {timeout_s:.0f} s")
                time.sleep(0.5)


def start_bundle(world: Path, out: Path, logs: Path) -> Path:
    """The round-0 bundle of both arms: the pretrained query tower over the world's catalog."""
    b = out / "bundles" / "start"
    if not (b / "index.faiss").is_file():
        _crops(["export", "--out", str(b)], logs / "start_export.log")
        _crops(["index", "build", "--bundle", str(b), "--corpus", str(world / "videos.parquet")],
               logs / "start_index.log")
    return b


def arm_logs(world: Path, joined: Path, arm: str, dest: Path) -> Path:
    """The arm's training logs: the world's logged history plus the arm's own online traffic."""
    if (dest / "search_log.parquet").is_file():
        return dest
    s = pq.read_table(joined / "search_log.parquet")
    s = s.filter(pc.equal(s.column("arm"), arm))
    base_s = SEARCH_LOG.conform(pq.read_table(world / "train" / "search_log.parquet"))
    _parquet(SEARCH_LOG.stamp(pa.concat_tables([base_s, SEARCH_LOG.conform(s)])), dest / "search_log.parquet")
    base_r = REC_LOG.conform(pq.read_table(world / "train" / "rec_log.parquet"))
    r = REC_LOG.conform(pq.read_table(joined / "rec_log.parquet"))
    _parquet(REC_LOG.stamp(pa.concat_tables([base_r, r])), dest / "rec_log.parquet")
    # the simulated LLM (P3) reads the world's query truth next to the logs
    link = dest / "truth"
    if not link.exists():
        link.symlink_to((world / "truth").resolve(), target_is_directory=True)
    return dest


def retrain(world: Path, logs: Path, arm: str, rd: Path, *, steps: int, recipe: str, seed: int) -> Path:
    """Mine → train → export → index for one arm; returns the new bundle."""
    bundle = rd / "bundle"
    if (bundle / "index.faiss").is_file():
        return bundle
    method = ARMS[arm]
    mined = rd / "mined"
    mine = ["mine", "--logs", str(logs), "--videos", str(world / "videos.parquet"), "--labels",
            str(world / "truth" / "relevance.parquet"), "--out", str(mined), "--no-progress", "--seed", str(seed)]
    if method != "crops":
        mine += ["--p3-n", "0"]  # the control trains on clicks and log stages: no P3 to pay for
    _crops(mine, rd / "mine.log")
    run = rd / "train"
    if not (run / "checkpoint").exists():
        _crops(["train", "--samples", str(mined / "samples.parquet"), "--videos", str(world / "videos.parquet"),
                "--out", str(run), "--method", method, "--recipe", recipe, "--steps", str(steps), "--seed", str(seed),
                "--device", "cpu"], rd / "train.log")
    _crops(["export", "--checkpoint", str(run / "checkpoint"), "--out", str(bundle)], rd / "export.log")
    _crops(["index", "build", "--bundle", str(bundle), "--corpus", str(world / "videos.parquet")],
           rd / "index.log")
    return bundle


def round_metrics(rep: dict[str, Any], bubble: dict[str, float | None]) -> dict[str, Any]:
    return {arm: {"ctr": m["ctr"], "reformulation_rate": m["reformulation_rate"],
                  "never_exposed_share": m["never_exposed_share"], "long_play_rate": m["long_play_rate"],
                  "session_success": m["session_success"], "recall_relevant": m["recall_relevant"],
                  "relevant_ever_exposed_share": bubble.get(arm), "users": m["users"], "requests": m["requests"]}
            for arm, m in rep["arms"].items()}


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ctr", "CTR"), ("reformulation_rate", "reformulation rate"),
              ("never_exposed_share", "never-exposed share of exposures"),
              ("relevant_ever_exposed_share", "relevant videos ever exposed (bubble)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for arm in ARMS:
            xs = [r["round"] for r in rounds if arm in r["arms"]]
            ys = [r["arms"][arm][key] for r in rounds if arm in r["arms"]]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], "o-", label=arm)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks([r["round"] for r in rounds])
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_loop(
    world: Path,
    out: Path,
    *,
    rounds: int,
    sessions: int,
    seed: int = 0,
    port: int = 18_510,
    steps: int = 150,
    recipe: str = "top1",
    concurrency: int = 8,
    start: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """K rounds: serve a day → collect logs → retrain each arm → hot-reload; returns loop.json."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    logs_dir = out / "logs"
    t_start = time.perf_counter()
    base = start or start_bundle(world, out, logs_dir)
    state_file = out / "loop.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {
        "world": str(world), "rounds": [], "seed": seed, "sessions": sessions, "steps": steps, "recipe": recipe}
    # the bundles each arm serves now: the last retrained one, else the start
    current = {arm: base for arm in ARMS}
    for r in state["rounds"]:
        for arm, b in r.get("next_bundles", {}).items():
            current[arm] = Path(b)
    w = OnlineWorld.load(world)
    svc = Service(out, current, port)
    exposed: dict[str, set[Any]] = {arm: set() for arm in ARMS}
    needs: dict[str, set[Any]] = {arm: set() for arm in ARMS}
    done_rounds = {r["round"] for r in state["rounds"]}
    if done_rounds:
        # resume: the ranking stage as it was after the last finished day, and the arms' exposures so far
        w.load_state(out / f"round{max(done_rounds)}" / "platform_state.npz")
        for k in sorted(done_rounds):
            b = json.loads((out / f"round{k}" / "bubble.json").read_text())
            for arm in ARMS:
                exposed[arm] |= {((n[0], n[1], n[2]), v) for n, v in b["exposed"].get(arm, [])}
                needs[arm] |= {(n[0], n[1], n[2]) for n in b["needs"].get(arm, [])}
    svc.start()
    try:
        for k in range(rounds):
            rd = out / f"round{k}"
            t0 = time.perf_counter()
            if k in done_rounds:
                continue
            bar = tqdm(total=sessions, desc=f"round {k} sessions", unit="sess", disable=not progress, mininterval=2)

            async def day(k: int = k, bar: Any = bar) -> Any:
                async with ServiceClient(svc.url, concurrency=concurrency) as c:
                    return await run_day(w, c, day=k, sessions=sessions, seed=seed, run_id=f"k{k}",
                                         concurrency=concurrency, progress=lambda d, t: bar.update(1))

            res = asyncio.run(day())
            bar.close()
            rd.mkdir(parents=True, exist_ok=True)
            write_tables(rd, res.requests, res.sessions)
            w.save_state(rd / "platform_state.npz")
            for arm in ARMS:
                exposed[arm] |= res.exposed_pairs.get(arm, set())
                needs[arm] |= res.needs.get(arm, set())
            atomic_write_json(rd / "bubble.json", {
                "exposed": {a: sorted([list(n), v] for n, v in res.exposed_pairs.get(a, set())) for a in ARMS},
                "needs": {a: sorted(list(n) for n in res.needs.get(a, set())) for a in ARMS}})
            bubble = {arm: bubble_share(w, exposed[arm], needs[arm]) for arm in ARMS}
            rep = build_report(pa.Table.from_pylist(res.requests), pa.Table.from_pylist(res.sessions), "control",
                               n_boot=1000, seed=seed)
            atomic_write_json(rd / "report.json", rep)
            t_served = time.perf_counter()
            entry: dict[str, Any] = {
                "round": k, "arms": round_metrics(rep, bubble), "deltas": rep["deltas"],
                "serve_s": round(t_served - t0, 1), "feedback_events": res.feedback_events,
                "bundles": {a: str(b) for a, b in current.items()},
            }
            if k < rounds - 1:  # the last round is measured, not retrained
                svc.wait_logged(_n_requests(out, k), sum(r["feedback_events"] for r in state["rounds"])
                                + res.feedback_events)
                joined = rd / "joined"
                _crops(["exposures", "--jsonl", str(svc.exposures), "--feedback-jsonl", str(svc.feedback),
                        "--out", str(joined)], rd / "exposures.log")
                entry["join"] = json.loads((joined / "join.json").read_text())
                nxt: dict[str, str] = {}
                for arm in ARMS:
                    ad = rd / arm
                    logs = arm_logs(world, joined, arm, ad / "logs")
                    bundle = retrain(world, logs, arm, ad, steps=steps, recipe=recipe, seed=seed)
                    svc.reload(arm, bundle)
                    current[arm] = bundle
                    nxt[arm] = str(bundle)
                entry["next_bundles"] = nxt
                entry["retrain_s"] = round(time.perf_counter() - t_served, 1)
            state["rounds"].append(entry)
            atomic_write_json(state_file, state)
            plot_rounds(state["rounds"], out / "loop.png")
            atomic_write_text(out / "loop.md", loop_markdown(state, out))
    finally:
        svc.stop()
    state["total_s"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(state_file, state)
    atomic_write_text(out / "loop.md", loop_markdown(state, out))
    return state


def _n_requests(out: Path, k: int) -> int:
    """Requests served so far (all rounds up to ``k``): what the exposure log must hold."""
    return sum(pq.read_metadata(out / f"round{j}" / "requests.parquet").num_rows for j in range(k + 1))


def loop_markdown(state: dict[str, Any], out: Path) -> str:
    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.4f}"

    lines = ["# Retraining rounds on the served arms", "",
             f"World `{state['world']}`, {state['sessions']} sessions per round (one simulated day), "
             f"`crops train --recipe {state['recipe']} --steps {state['steps']}`; control retrains on clicks and "
             "log stages (`fs-lr`), treatment on the CroPS recipe (`crops`), each on the world's logged history "
             "plus its own traffic.", "",
             "| round | arm | CTR | long-play | reformulation | never-exposed share | relevant ever exposed | "
             "session success | recall@100 rel. |", "|---|---|---|---|---|---|---|---|---|"]
    for r in state["rounds"]:
        for arm, m in r["arms"].items():
            lines.append(f"| {r['round']} | {arm} | {f(m['ctr'])} | {f(m['long_play_rate'])} | "
                         f"{f(m['reformulation_rate'])} | {f(m['never_exposed_share'])} | "
                         f"{f(m['relevant_ever_exposed_share'])} | {f(m['session_success'])} | "
                         f"{f(m['recall_relevant'])} |")
    lines += ["", "Treatment vs control per round (relative delta, 95% bootstrap CI over users):", "",
              "| round | CTR | reformulation | never-exposed share |", "|---|---|---|---|"]
    for r in state["rounds"]:
        d = r["deltas"].get("treatment", {})

        def c(m: str, d: dict[str, Any] = d) -> str:
            x = d.get(m) or {}
            if x.get("delta_rel") is None:
                return "–"
            lo, hi = x.get("ci_low"), x.get("ci_high")
            ci = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None and hi is not None else ""
            return f"{100 * x['delta_rel']:+.2f}%{ci}"

        lines.append(f"| {r['round']} | {c('ctr')} | {c('reformulation_rate')} | {c('never_exposed_share')} |")
    if "total_s" in state:
        lines += ["", f"Total wall time: {state['total_s'] / 60:.1f} min."]
    lines += ["", "![rounds](loop.png)", ""]
    return "\n".join(lines)


def run_ab(
    world: Path,
    out: Path,
    *,
    treatment: Path | None,
    control: Path | None,
    sessions: int,
    days: int = 1,
    seed: int = 0,
    port: int = 18_520,
    workers: int = 2,
    redis_url: str | None = None,
    steps: int = 300,
    recipe: str = "top1",
    concurrency: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """The pretrained bundle (control) vs a CroPS-trained bundle (treatment) through a real service
    (``workers`` uvicorn workers, A/B config and cache in Redis when ``redis_url`` is given)."""
    from online.driver import run_online
    from online.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    logs_dir = out / "logs"
    control = control or start_bundle(world, out, logs_dir)
    if treatment is None:  # CroPS on the world's logged history (the same recipe the loop's treatment uses)
        td = out / "treatment"
        logs = td / "logs"
        if not (logs / "search_log.parquet").is_file():
            logs.mkdir(parents=True, exist_ok=True)
            for name in ("search_log.parquet", "rec_log.parquet"):
                (logs / name).symlink_to((world / "train" / name).resolve())
            (logs / "truth").symlink_to((world / "truth").resolve(), target_is_directory=True)
        treatment = retrain(world, logs, "treatment", td, steps=steps, recipe=recipe, seed=seed)
    svc = Service(out, {"control": control, "treatment": treatment}, port, workers=workers, redis_url=redis_url,
                  cache="redis" if redis_url else "memory")
    svc.start()
    try:
        summary = run_online(world, svc.url, out, sessions=sessions, days=days, seed=seed, concurrency=concurrency,
                             run_id=f"ab{seed}", progress=progress)
    finally:
        svc.stop()
    rep = write_report(out, "control", title="Pretrained (control) vs CroPS-trained (treatment) through the service",
                       seed=seed)
    rep["run"] = {**summary, "control_bundle": str(control), "treatment_bundle": str(treatment),
                  "workers": workers, "redis": bool(redis_url), "cache": svc.cache}
    atomic_write_json(out / "report.json", rep)
    return rep


__all__ = ["markdown", "plot", "run_ab", "run_loop"]

"""What the benchmark scripts share: servers, memory, load runs, the SLO rate search, reports.

- processes: :func:`free_port`, :func:`server_env`, :func:`server` (start, wait for ``/readyz``,
  stop), :func:`stop`, :func:`pinned`; nginx in front of replicas: :func:`nginx_conf` (the deployment's
  config made local), :func:`nginx_exe`, :func:`nginx` (started with it, like :func:`server`);
- memory of a process tree: :func:`tree_peak_rss_mib` (VmHWM), :func:`tree_pss_mib`;
- load: :func:`measure_open` (fixed rate, open loop) and :func:`measure_closed` (closed loop), both
  ``loadtest.openloop`` summarised by ``loadtest.report.run_stats``; :func:`search_queries` (the
  fleet's load), :func:`distinct_queries`;
- the SLO: :func:`meets_slo` (one point) and :func:`max_rate_within_slo` (bisection over rates);
- the machine: :func:`machine_info`, :func:`other_processes_cores`;
- reports: :func:`fmt`, :func:`markdown_table`, :func:`write_report` (markdown + JSON + PNG through
  ``core.atomic``);
- scripts: :func:`log` (a timestamped progress line), :func:`bundle_arg` (``--bundle``, checked).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from core.atomic import atomic_path, atomic_write_json, atomic_write_text
from loadtest.openloop import closed_loop, open_loop
from loadtest.ready import NotReady, wait_ready
from loadtest.report import run_stats

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "perf"
DATA = ROOT.parent / "shared" / "data"
REAL_QUERY_SETS = ROOT / "runs" / "realq" / "sets"  # written by benchmarks.real_query_recall

Point = dict[str, Any]


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def bundle_arg(path: str) -> Path:
    """An argparse ``type`` for ``--bundle``: the path when it holds a bundle (a ``manifest.json``), else
    a usage error (exit 2) before anything starts."""
    import argparse

    if not (Path(path) / "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a bundle (no manifest.json)")
    return Path(path)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(*, isolated: bool = False, **overrides: str) -> dict[str, str]:
    """This process's environment for a measured server: cache off, one thread per worker, and no
    Redis, A/B configuration, bundle or metrics folder inherited from the caller (``isolated``: no
    ``CROPS_*`` variable at all, so the server's settings are its defaults and what is set here); then
    ``overrides``."""
    inherited = {k: v for k, v in os.environ.items() if not (isolated and k.startswith("CROPS_"))}
    env = {**inherited, "CROPS_CACHE": "none", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for key in ("CROPS_REDIS_URL", "CROPS_EXPERIMENTS", "CROPS_BUNDLE", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    env.update(overrides)
    return env


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to ``proc``'s process group (a server and its workers), SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def server(
    cmd: Sequence[str],
    *,
    port: int,
    name: str,
    env: dict[str, str] | None = None,
    log_dir: Path = RUNS,
    ready_timeout: float = 900.0,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own process group (output to ``log_dir/NAME.log``); yield it once
    ``http://127.0.0.1:PORT/readyz`` answers 200; stop the whole group on exit. A server that exits
    or never gets ready raises ``NotReady`` naming its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logf = log_dir / f"{name}.log"
    with open(logf, "wb") as fh:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, timeout=ready_timeout)
        except NotReady as exc:
            raise NotReady(f"{name}: {exc}; see {logf}") from exc
        yield proc
    finally:
        stop(proc)


NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"


def nginx_conf(template: str, upstreams: Sequence[int], port: int, prefix: Path, *, max_conns: int | None = None,
               worker_processes: int | None = None) -> str:
    """The deployment's nginx.conf as shipped (least_conn, its per-replica limits), with its one upstream
    server line repeated for each local replica port, and its listen port and pid file made local.
    ``max_conns`` replaces the shipped per-replica limit (0: none); ``worker_processes`` the shipped
    count (e.g. 1 on a small box, where the replicas need the cores)."""
    line = re.search(r"server crops:8000([^;]*);", template)
    if line is None:
        raise ValueError("nginx.conf: expected one 'server crops:8000 ...;' upstream line")
    options = line.group(1)
    if max_conns is not None:
        options = re.sub(r"\s+max_conns=\d+", "", options) + (f" max_conns={max_conns}" if max_conns > 0 else "")
    servers = " ".join(f"server 127.0.0.1:{p}{options};" for p in upstreams)
    conf = template.replace(line.group(0), servers)

    def directive(name: str, value: str, text: str) -> str:  # a directive's line, never a comment's words
        return re.sub(rf"^(\s*){name} [^;\n]+;", lambda m: f"{m.group(1)}{name} {value};", text, flags=re.M)

    conf = directive("listen", f"127.0.0.1:{port}", conf)
    if worker_processes is not None:
        conf = directive("worker_processes", str(worker_processes), conf)
    return directive("pid", str(prefix / "nginx.pid"), conf)


def nginx_exe() -> str:
    """The nginx binary; ``FileNotFoundError`` when it is not installed (check before starting replicas)."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    return exe


@contextlib.contextmanager
def nginx(
    upstreams: Sequence[int],
    *,
    port: int,
    max_conns: int | None = None,
    worker_processes: int | None = None,
    name: str = "nginx",
    log_dir: Path = RUNS,
    ready_timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with :func:`nginx_conf` (``deploy/nginx/nginx.conf``; ``max_conns``, ``worker_processes``
    as there) in front of the replicas on ``upstreams``, listening on 127.0.0.1:``port``; its prefix
    (config, pid, temporary files) is ``log_dir/NAME``, its log ``log_dir/NAME.log`` (every refusal is
    logged: a file, never a pipe). Run by :func:`server`: yielded once ``/readyz`` answers through it (a
    replica's), stopped on exit. ``FileNotFoundError`` when nginx is not installed."""
    exe = nginx_exe()
    prefix = log_dir / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)  # nginx opens logs/error.log before its config
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(NGINX_CONF.read_text(), upstreams, port, prefix, max_conns=max_conns,
                               worker_processes=worker_processes))
    with server([exe, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], port=port, name=name,
                log_dir=log_dir, ready_timeout=ready_timeout) as proc:
        yield proc


@contextlib.contextmanager
def pinned(cpus: Sequence[int]) -> Iterator[None]:
    """Run the block with this process on ``cpus`` only (e.g. the load generator on its own core)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------- memory


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (those alive now)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _proc_kib(path: str, field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    return None


def _tree_peaks_kib(pid: int) -> list[int]:
    """The peak resident set (VmHWM, KiB) of each live process in ``pid``'s tree."""
    kib = [_proc_kib(f"/proc/{p}/status", "VmHWM:") for p in tree_pids(pid)]
    return [k for k in kib if k is not None]


def tree_peak_rss_mib(pid: int) -> float:
    """Sum of the peak resident set (VmHWM) over a process and its descendants, MiB; nan if gone."""
    found = _tree_peaks_kib(pid)
    return round(sum(found) / 1024, 1) if found else float("nan")


def largest_peak_rss_mib(pid: int) -> float:
    """The largest peak resident set (VmHWM) of one process in ``pid``'s tree, MiB (a worker's, shared
    pages counted in full); nan if gone."""
    found = _tree_peaks_kib(pid)
    return round(max(found) / 1024, 1) if found else float("nan")


def tree_pss_mib(pid: int) -> float:
    """Sum of the proportional set size (PSS, pages shared between processes split among them) over a
    process and its descendants now, MiB; nan if gone or unreadable."""
    kib = [_proc_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in tree_pids(pid)]
    found = [k for k in kib if k is not None]
    return round(sum(found) / 1024, 1) if found else float("nan")


def tree_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes in the trees of ``pids``."""
    import psutil

    total = 0.0
    for root in pids:
        for p in tree_pids(root):
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(p).cpu_times()
                total += t.user + t.system
    return total


# --------------------------------------------------------------------------- load


def measure_open(
    url: str, bodies: Sequence[bytes], *, rate: float, seconds: float, connections: int = 32, warmup_s: float = 1.0,
    server_pids: Sequence[int] = (),
) -> Point:
    """One fixed-rate open-loop run; ``run_stats`` over ``[warmup_s, seconds)`` plus the rate asked.

    With ``server_pids``, also where the cores went over the whole run: ``server_cores`` (the server
    trees' CPU seconds per wall second) and ``generator_cores`` (this process, which runs the load
    generator), so a report can tell a slow server from a box that had no core left."""
    cpu0, gen0, t0 = tree_cpu_s(server_pids), time.process_time(), time.perf_counter()
    samples = open_loop(url, bodies, rate=rate, duration=seconds, connections=connections)
    wall = time.perf_counter() - t0
    point: Point = {"rate": rate, **run_stats(samples, seconds, warmup_s=warmup_s)}
    if server_pids:
        point["server_cores"] = round((tree_cpu_s(server_pids) - cpu0) / wall, 3)
        point["generator_cores"] = round((time.process_time() - gen0) / wall, 3)
    return point


def measure_closed(
    url: str, bodies: Sequence[bytes], *, connections: int, seconds: float, warmup_s: float = 1.0
) -> Point:
    """One closed-loop run (each connection sends again as soon as it is answered): the most
    requests/s at this concurrency, at any latency."""
    samples = closed_loop(url, bodies, connections=connections, duration=seconds)
    return {"connections": connections, **run_stats(samples, seconds, warmup_s=warmup_s)}


SEARCH_SETS = ("microlens_mimics", "trec_session")  # queries people typed into a search box


def set_queries(name: str, sets_dir: Path | None = REAL_QUERY_SETS) -> list[str]:
    """The distinct queries of one real query set under ``sets_dir`` ([] when it is not there)."""
    from index_builder.queries import read_query_texts

    f = sets_dir / name / "queries.jsonl" if sets_dir is not None else None
    return list(dict.fromkeys(read_query_texts(f))) if f is not None and f.is_file() else []


def search_queries(sets_dir: Path | None = REAL_QUERY_SETS, seed: int = 0) -> tuple[list[str], str]:
    """The load of a search service: the distinct real search queries (MIMICS-Manual Bing queries, TREC
    Session queries), shuffled with ``seed`` so that any slice of the list has the same mix; the
    generated query mix when those sets are not there. Returns (queries, where they came from).

    The query sets' other members are not search queries (ActivityNet caption sentences, SciFact
    claims): several times the words of a typed query, which the encoder pays for."""
    from loadtest.querymix import load_mix

    out: dict[str, None] = {}
    used = []
    for name in SEARCH_SETS:
        before = len(out)
        out.update(dict.fromkeys(set_queries(name, sets_dir)))
        if len(out) > before:
            used.append(f"{name} {len(out) - before}")
    if not out:
        out = dict.fromkeys(load_mix(None).queries)
        used = [f"the generated query mix {len(out)}"]
    queries = list(out)
    random.Random(seed).shuffle(queries)
    return queries, f"{len(queries)} distinct search queries ({', '.join(used)}), shuffled"


def distinct_queries(n: int, sets_dir: Path | None = REAL_QUERY_SETS) -> tuple[list[str], str]:
    """``n`` queries, none repeated (so no cache or single-flight merges any): the real query sets under
    ``sets_dir`` first (MIMICS-Manual, ActivityNet captions, TREC Session, SciFact, from
    ``benchmarks.real_query_recall``), then the generated query mix made distinct by a number.
    Returns (queries, where they came from)."""
    from loadtest.querymix import load_mix

    out: dict[str, None] = {}
    used = []
    for name in ("microlens_mimics", "activitynet", "trec_session", "scifact"):
        found = set_queries(name, sets_dir) if len(out) < n else []
        if found:
            before = len(out)
            out.update(dict.fromkeys(found))
            used.append(f"{name} {len(out) - before}")
    real = min(n, len(out))
    mix = load_mix(None).queries
    i = 0
    while len(out) < n:
        q = mix[i % len(mix)]
        out.setdefault(q if i < len(mix) else f"{q} {i // len(mix)}", None)
        i += 1
    parts = [f"{real} from the real query sets ({', '.join(used)})"] if used else []
    if n > real:
        parts.append(f"{n - real} from the generated query mix, numbered to be distinct")
    source = "; ".join(parts)
    return list(out)[:n], f"{n} distinct queries: {source}"


# --------------------------------------------------------------------------- the SLO


def meets_slo(point: Point, slo_ms: float, *, min_share: float = 0.98) -> bool:
    """A measured point is within the SLO: p99 ≤ ``slo_ms``, no failure, and, for a fixed-rate point
    (one with a ``rate``), at least ``min_share`` of that rate achieved."""
    p99 = point.get("p99_ms")
    if p99 is None or p99 != p99 or p99 > slo_ms or point.get("failures", 0):
        return False
    rate = point.get("rate")
    return rate is None or point.get("rps", 0.0) >= min_share * rate


def max_rate_within_slo(
    measure: Callable[[float], Point],
    *,
    start: float,
    ceiling: float,
    slo_ms: float,
    steps: int = 4,
    resolution: float = 10.0,
    min_share: float = 0.98,
    name: str = "",
) -> dict[str, Any]:
    """The highest fixed rate whose point meets the SLO, by bisection.

    ``measure(rate)`` runs one point. The first is at ``start``; if it passes, the search goes up
    to ``max(ceiling, 1.05 × start)`` (``ceiling``: e.g. the in-process limit), else down to 0; then at
    most ``steps`` more points, stopping when the bracket is narrower than ``resolution`` req/s.
    Returns ``{"start": point, "points": [later points], "best": rate or None}``; every point has
    ``within_slo``."""
    first = {**measure(start), "rate": start}
    first["within_slo"] = meets_slo(first, slo_ms, min_share=min_share)
    if first["within_slo"]:
        lo, hi, best = start, max(ceiling, start * 1.05), start
    else:
        lo, hi, best = 0.0, start, None
    points: list[Point] = []
    for _ in range(steps):
        if hi - lo < resolution:
            break
        rate = float(round((lo + hi) / 2))
        p = {**measure(rate), "rate": rate}
        p["within_slo"] = meets_slo(p, slo_ms, min_share=min_share)
        points.append(p)
        if name:
            log(f"{name}: {rate:g} req/s → p99 {p.get('p99_ms')} ms ({'ok' if p['within_slo'] else 'over'})")
        if p["within_slo"]:
            lo, best = rate, rate
        else:
            hi = rate
    return {"start": first, "points": points, "best": best}


# --------------------------------------------------------------------------- the machine


# One thread multiplying float32 matrices of the tower's width: the same VM type has run this in 4.1 ms
# and in 12 ms (a busier host), and every latency in a report moves with it.
_PROBE = """
import statistics, time
import numpy as np
a = np.random.default_rng(0).random((192, 384), dtype=np.float32)
b = np.random.default_rng(1).random((384, 384), dtype=np.float32)
ts = []
for _ in range(300):
    t = time.perf_counter()
    for _ in range(9):
        a @ b
    ts.append(time.perf_counter() - t)
print(statistics.median(ts) * 1e3)
"""


def cpu_probe_ms() -> float | None:
    """The machine's speed in one number (ms, lower is faster): the median time of nine one-thread
    192x384 @ 384x384 float32 products, in a fresh process. None if it could not run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=False)
    try:
        return round(float(out.stdout.strip()), 2)
    except ValueError:
        return None


def describe_machine(m: dict[str, Any]) -> str:
    """``machine_info`` for a report's first line: CPU, cores and the speed probe."""
    probe = m.get("cpu_probe_ms")
    return f"{m['cpu']} · {m['cores']} cores" + (f" · CPU probe {probe:g} ms" if probe is not None else "")


def machine_info(tools: Sequence[str] = ("nginx",)) -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python, git commit, and the versions of the libraries and
    ``tools`` (binaries asked with ``-v``) a result depends on."""
    import shutil
    from importlib import metadata

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("onnxruntime", "faiss-cpu", "fastapi", "uvicorn", "granian", "uvloop", "torch",
                "sentence-transformers", "numpy", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    for tool in tools:
        path = shutil.which(tool)
        if path:
            out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
            text = (out.stdout + out.stderr).strip()
            versions[tool] = text.splitlines()[0].split(": ", 1)[-1] if text else "?"  # "nginx version: nginx/1.22.1"
    # `git describe --dirty`: a report measured with uncommitted changes says so instead of naming a
    # commit whose code it did not run.
    git = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                         text=True, check=False).stdout.strip()
    thp = "unknown"
    with contextlib.suppress(OSError):
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_probe_ms": cpu_probe_ms(),
        # what the processes a benchmark starts get for their heap (service.heap): glibc's setting
        # and the kernel's transparent huge page mode
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_hugepage": thp,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "git": git,
        "versions": versions,
    }


def other_processes_cores(seconds: float = 2.0) -> float:
    """Cores' worth of CPU that processes other than this one used over ``seconds`` (a shared box)."""
    import psutil

    me = psutil.Process()

    def busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0)
                     + getattr(t, "softirq", 0.0))

    def own() -> float:
        c = me.cpu_times()
        return float(c.user + c.system)

    b0, o0, t0 = busy(), own(), time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return round(max(0.0, (busy() - b0 - (own() - o0)) / dt), 2)


# --------------------------------------------------------------------------- reports


def fmt(x: Any, nd: int = 1) -> str:
    """A number for a table: ``nd`` decimals for floats, ``n/a`` for None and nan."""
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table's lines (cells as given, ``|`` in a cell escaped)."""

    def cells(row: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    return [cells(header), "|" + "---|" * len(header), *(cells(r) for r in rows)]


def write_report(md_path: Path, markdown: str, result: dict[str, Any], *, figure: Any = None) -> list[Path]:
    """``md_path`` (the markdown), the same name with ``.json`` (``result``) and, given a matplotlib
    figure, ``.png``; each written atomically (a reader never sees half a file). Returns the paths."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    written = [md_path.with_suffix(".json")]
    atomic_write_json(written[0], result)
    if figure is not None:
        png = md_path.with_suffix(".png")
        with atomic_path(png) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
        written.append(png)
    atomic_write_text(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return [md_path, *written]

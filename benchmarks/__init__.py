"""Benchmark scripts, each run from the repository root as ``python -m benchmarks.NAME``.

Shared code: ``benchmarks.harness`` (servers, memory, load runs, the SLO rate search, machine info,
reports) and ``benchmarks.vectors`` (the 1M-vector bench bundle). Every benchmark measures one
thread per process unless it says otherwise: the caps below are set before numpy or faiss load
(the environment can override them). Processes they start get the served heap configuration:
large allocations on transparent huge pages (``service.heap``; glibc reads it at process start).
"""

import os

from service.heap import HUGE_PAGES_TUNABLE

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GLIBC_TUNABLES", HUGE_PAGES_TUNABLE)

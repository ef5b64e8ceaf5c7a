"""Benchmark scripts, each run from the repository root as ``python -m benchmarks.NAME``.

Shared code: ``benchmarks.harness`` (servers, memory, load runs, the SLO rate search, machine info,
reports) and ``benchmarks.vectors`` (the 1M-vector bench bundle). Every benchmark measures one
thread per process unless it says otherwise: the caps below are set before numpy or faiss load
(the environment can override them).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

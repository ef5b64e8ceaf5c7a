"""CroPS data engine: logs → labelled samples (P0–P3 positives, discriminator θ, HLA levels).

Modules: ``hla`` (levels and sources), ``config`` (knobs), ``perspectives`` (the SQL shared by every
engine), ``engines`` (DuckDB and Spark runners of that SQL), ``discriminator`` (θ: calibrated
MiniLM relevance probability), ``llm_client`` (OpenAI-compatible chat client + simulated LLM
adapter), ``p3`` (world-knowledge generation and its quality filter), ``pipeline`` (the resumable
``mine`` job) and ``report`` (counts, α sweep, plots).
"""

"""World simulator: a short-video platform with a real filter bubble and known ground truth.

The public surface other stages use (everything else is internal)::

    from world import Platform, Retriever, build_world, tiny_config

- ``build_world(out, cfg, seed=...)`` writes a world folder (logs, truth, eval sets, the ranking
  stage's state); ``WorldConfig`` / ``load_config`` / ``tiny_config`` hold its knobs.
- ``Platform.from_world(folder)`` puts the world's users in front of any ``Retriever`` (query text,
  user id → top-k video ids): the legacy ranking stage orders the candidates, users examine, click,
  play, reformulate, and the feed leans toward their session, step by step and deterministically
  (``open_sessions`` → ``respond`` / ``run`` → ``feed_around`` → ``end_day``).
- ``LexicalRetriever`` is the legacy stack's own retrieval (what produced the logs).

Modules: ``ontology`` (categories → topics → intents, from ``vocabulary.txt`` or ``--ontology``),
``textgen``, ``catalog``, ``config``, ``population``, ``legacy`` (the logged search stack),
``retrieval`` (the pluggable stage), ``funnel`` (ranking, clicks, reformulation, feed: the one code
path), ``simulate`` (the logged days), ``platform`` (the step API), ``build``, ``report``, plus
``knowledge`` (the simulated LLM for P3) and ``evaluation`` (metrics on the eval sets).
"""

from world.build import build_world, read_world_info
from world.config import WorldConfig, load_config, tiny_config
from world.platform import (
    FeedEvent,
    Impression,
    Need,
    Platform,
    RequestOutcome,
    SearchRequest,
    SearchSession,
)
from world.retrieval import IndexRetriever, LexicalRetriever, Retriever

__all__ = [
    "FeedEvent",
    "Impression",
    "IndexRetriever",
    "LexicalRetriever",
    "Need",
    "Platform",
    "RequestOutcome",
    "Retriever",
    "SearchRequest",
    "SearchSession",
    "WorldConfig",
    "build_world",
    "load_config",
    "read_world_info",
    "tiny_config",
]

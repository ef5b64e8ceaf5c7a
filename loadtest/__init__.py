"""Load tests for the retrieval service: HTTP only (imports ``core`` and nothing else of ours).

- ``querymix``: the traffic (head/torso/tail queries by frequency, user ids for A/B arms);
- ``locustfile``: locust scenarios for /retrieve and /retrieve/batch;
- ``run``: headless runner (ramp, hold, report, exit 1 on a missed SLO);
- ``openloop``: a small HTTP load generator: fixed-rate open loop, and closed loop for max throughput;
- ``report``: summaries, SLO verdict, markdown + PNG.
"""

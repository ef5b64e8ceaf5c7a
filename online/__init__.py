"""The online half: simulated users on the served A/B arms, feedback into the logs, retraining rounds.

Imports ``core`` and ``world`` only; it talks to the service over HTTP and drives training, export and
index building through the ``crops`` CLI (stages exchange artifacts, never imports).
"""

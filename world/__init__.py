"""World simulator: a short-video platform with a real filter bubble and known ground truth.

Modules: ``ontology`` (categories → topics → intents, parsed from ``vocabulary.txt``), ``textgen``
(titles, captions, tags, query phrasings), ``catalog`` (videos + real-title loaders), ``config``
(every knob), and — for the logs — ``population``, ``legacy``, ``simulate``, ``build``, plus
``knowledge`` (``SimulatedLLM``, the offline P3 knowledge source), ``evaluation`` (reusable metrics)
and ``report``.
"""

"""The ``crops`` command line: the composition root that calls each stage (stages never import each other)."""

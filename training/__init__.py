"""CroPS training stage: world simulator, data engine, losses, trainer, evaluation, baselines."""

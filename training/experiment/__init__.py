"""The Table-1 experiment on the world simulator, its evaluation, and the SciFact fine-tune."""

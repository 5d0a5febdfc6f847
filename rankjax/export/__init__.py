"""Serving: export a trained run (artifact.py), load and score it (serving.py), weights on disk (weights.py)."""

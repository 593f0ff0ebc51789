"""Reproducible experiments (imported on demand; ``import mpokit`` does not load them)."""

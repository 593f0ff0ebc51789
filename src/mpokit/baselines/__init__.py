"""Baselines that MPO compression is compared against (pruning, low-rank, LSTM pruning)."""

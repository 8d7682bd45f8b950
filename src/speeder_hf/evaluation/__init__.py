"""Evaluation: per-row outcomes and their metrics, title answers and the typed report."""

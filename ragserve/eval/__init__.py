"""Evaluation: retrieval metrics (nDCG, recall) and the runners that compute them on real data."""

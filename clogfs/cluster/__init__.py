"""Cluster coherence: the ordered-group interface and its backends."""

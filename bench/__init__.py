"""clogfs benchmarks: ``python -m bench`` (``make bench``) runs them all.

Every figure is a ratio against a floor measured in the same run on the same machine, never
an absolute target, so a slow or busy machine moves both sides alike.
"""

"""clogfs.cluster package."""

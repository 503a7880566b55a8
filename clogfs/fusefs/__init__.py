"""clogfs.fusefs package."""

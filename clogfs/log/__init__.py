"""clogfs.log package."""

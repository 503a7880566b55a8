"""clogfs.disklog package."""

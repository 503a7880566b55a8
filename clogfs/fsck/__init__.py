"""clogfs.fsck package."""

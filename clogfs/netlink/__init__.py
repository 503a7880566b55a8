"""clogfs.netlink package."""

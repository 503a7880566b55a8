"""clogfs: the userspace half of the Linux device-mapper cluster dirty log."""

__version__ = "0.1.0"

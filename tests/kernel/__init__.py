"""Real dm-mirror tables with the userspace log, in a stock Debian kernel under QEMU."""

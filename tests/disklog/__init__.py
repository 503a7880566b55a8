"""Tests of the disk log format and device I/O."""

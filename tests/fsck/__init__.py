"""Tests of clog-fsck: image fixtures, modes, exit bits."""

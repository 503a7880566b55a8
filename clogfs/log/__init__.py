"""The pure log core: CTR parsing, bitmaps, the region state machine and log instances.

``ctr`` parses and validates CTR strings; ``bitmap`` is the on-disk-ordered bitset;
``regions`` holds the replicated region state and its rules; ``instance`` is one log instance
with its lifecycle and disk commits. The registry of instances is ``clogfs.registry``.

Core package: no trio, no sockets, no I/O, no clock.
"""

"""Tests of the pure cores: plain synchronous pytest, no trio."""

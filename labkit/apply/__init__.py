"""Applying a plan to running nodes over SSH."""

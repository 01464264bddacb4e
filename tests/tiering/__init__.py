"""Tests against real S3-compatible servers (a package: its conftest and helpers must not clash with others)."""

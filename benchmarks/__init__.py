"""Benchmarks for favor-export: run them as modules from the repository root."""

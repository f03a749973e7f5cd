"""Test machinery: simulators, in-memory replicas, local clusters and fault hooks.

Nothing in the product's runtime path imports this package (an import-linter contract
says so); tests, benchmarks and the fault suite do.
"""

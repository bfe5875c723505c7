"""Data set registry: each loader returns seeded train/test splits with stable sample ids and domain."""

from uverify.datasets.base import Dataset, Domain, Splits, load, registered

__all__ = ["Dataset", "Domain", "Splits", "load", "registered"]

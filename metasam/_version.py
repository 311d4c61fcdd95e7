"""The package version (one owner: the root package and records read it here)."""

__version__ = "0.1.0"

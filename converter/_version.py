"""The package version, importable without importing the package (and its public API) first."""

__version__ = "0.1.0"

"""The package's version, on the bottom floor so that any module may record it."""

__version__ = "0.2.0"

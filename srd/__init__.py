"""srd: a super-resolution daemon for watch folders."""

__version__ = "0.1.0"

"""Flux Control: decides when data tables may be rebuilt."""

__version__ = "0.1.0"

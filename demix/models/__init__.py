"""Registered separation models (importing this package registers them)."""

from demix.models.bandsplit import BandSplitConfig, BandSplitModel

__all__ = ["BandSplitConfig", "BandSplitModel"]

"""Registered separation models (importing this package registers them)."""

from demix.models.bandsplit import BandSplitConfig, BandSplitModel
from demix.models.dualpath import DualPathConfig, DualPathModel

__all__ = ["BandSplitConfig", "BandSplitModel", "DualPathConfig", "DualPathModel"]

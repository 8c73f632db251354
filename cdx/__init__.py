"""Film track of demix: dialogue / music / effects (DME) stems, data and post-production tools."""

CDX_STEMS: tuple[str, ...] = ("dialogue", "music", "effects")

__all__ = ["CDX_STEMS"]

# Importing the package registers its training data sources with demix's registry.
from cdx import datasets as _datasets  # noqa: E402, F401
from cdx import mix as _mix  # noqa: E402, F401

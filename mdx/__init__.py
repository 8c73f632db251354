"""Music track of demix: six stems, dataset layouts, stem selection and synthetic multitracks."""

MDX_STEMS: tuple[str, ...] = ("drums", "bass", "vocals", "guitar", "piano", "other")

__all__ = ["MDX_STEMS"]

# Importing the package registers its training data sources with demix's registry.
from mdx import datasets as _datasets  # noqa: E402, F401
from mdx import mix as _mix  # noqa: E402, F401

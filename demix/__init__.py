"""demix: a cinematic demixer with one band-split backbone and two heads (film, music).

Quick start::

    from demix import Separator
    sep = Separator.from_pretrained("demix-small")
    stems = sep.separate(mix, sample_rate, head="film")   # {name: Tensor[c, t]}, sum == mix
    louder = remix({k: v.numpy() for k, v in stems.items()}, {"dialogue": 6.0})
"""

from demix.mixing import remix
from demix.separator import SeparationError, Separator

__version__ = "0.1.0"
__all__ = ["Separator", "SeparationError", "remix", "__version__"]

"""Image readers behind one entry point, :func:`load_image`; masks and lesion boxes.

Readers register themselves in :mod:`breastai.data.readers.registry` when their module is
imported; this package imports each of them explicitly, so ``load_image`` always knows every
format (PIL images, NIfTI, DICOM with its LUT pipeline and mammography geometry).
"""

# Registration order is the order readers are tried in: NIfTI and PIL by suffix, then DICOM by content.
from breastai.data.readers import nifti, pil  # noqa: F401,I001
from breastai.data.readers import dicom  # noqa: F401,E402,I001
from breastai.data.readers.masks import LesionBox, load_mask
from breastai.data.readers.registry import (IMAGE_SUFFIXES, ImageReadError, image_stem, image_suffix, load_image,
                                            register_reader, to_grey)

__all__ = ["ImageReadError", "register_reader", "load_image", "load_mask", "LesionBox", "IMAGE_SUFFIXES",
           "image_suffix", "image_stem", "to_grey"]

"""Names of the keys of a sample dict, as MONAI's ``CommonKeys``: one spelling for every module.

A sample is a dict (MONAI style) that starts as a datalist record
(:func:`breastai.data.datalist.read_datalist`), goes through the preprocessing transforms
(:mod:`breastai.data.transforms`) and is batched by :func:`breastai.engine.loops.collate`. The
values are the plain strings written in datalists and checkpoints, so ``d[Keys.IMAGE]`` and
``d["image"]`` are the same entry.
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    """The sample keys. Each attribute's note says what the entry holds at each stage."""

    IMAGE = "image"
    """Datalist: the image path. Loaded: (1, H, W) float32 on the reader's grid, then normalised to
    about [0, 1]; boxed: (1, S, S); network input: a (C, S, S) tensor (C = 2 with the mask channel);
    batch: (B, C, S, S)."""

    MASK = "mask"
    """Datalist: a list of mask paths (their union is the lesion), possibly empty; inference may give
    an array or a :class:`~breastai.data.readers.masks.LesionBox`. Loaded: (1, H, W) float32 0/1 on
    the reader's grid; boxed: (1, S, S); batch: (B, 1, S, S) when every sample has one."""

    LABEL = "label"
    """Datalist: the class name (``benign``, ``malignant``), empty when unknown. Network input: the
    class index, -1 when unknown; batch: a float tensor."""

    CASE_ID = "case_id"
    """Unique name of the row (default: the image file name without suffix; ``_fK`` appended per
    frame when multi-frame rows are expanded)."""

    GROUP = "group"
    """Patient or duplicate-copy group; a group never straddles two folds or splits."""

    FOLD = "fold"
    """Datalist: a fixed cross-validation fold (int), or None."""

    SPLIT = "split"
    """Datalist: a fixed partition, ``train``, ``val``, ``test`` or empty."""

    SITE = "site"
    """Datalist (optional extra column): the dataset or hospital the row comes from (``busi``,
    ``mias``, ``breast-lesions-usg``), written by every ``breastai prepare`` preparer so that
    datalists of several sites can be merged and compared; kept as a string."""

    MODALITY = "modality"
    """Datalist (optional extra column): the imaging modality, ``US`` or ``MG`` (DICOM's codes), or
    empty when unknown; kept as a string."""

    EXAM = "exam"
    """Datalist (optional extra column): the exam (screening visit) the image belongs to; the
    breast- and exam-level scores group by it (:mod:`breastai.reporting.levels`). DICOM: the hash
    of the Study Instance UID. Kept as a string."""

    LATERALITY = "laterality"
    """Datalist (optional extra column): the breast, ``L``, ``R`` or ``B`` (both), or empty; DICOM:
    Image Laterality, else Laterality."""

    VIEW = "view"
    """Datalist (optional extra column): the view position (``CC``, ``MLO``, ...), or empty; DICOM:
    View Position, else the View Code Sequence."""

    FRAME = "frame"
    """Frame index of a multi-frame DICOM row (frame policy ``all``): the reader reads that frame."""

    INDEX = "index"
    """Position of the sample in the dataset's record list; predictions gathered across ranks are
    put back in order (and de-duplicated) by it."""

    SOURCE = "source"
    """What the image was read from, for messages: the path as a string, or ``<array>``."""

    READER_META = "reader_meta"
    """Inference only: the reader's meta dict for an image given as an array the reader returned
    (DICOM ``crop_box``, ``flipped_lr``, ``rows``, ``cols``); taken out when the image is loaded."""

    READER_CROP_BOX = "reader_crop_box"
    """The reader's crop of the stored image, ``(r0, r1, c0, c1)``, where it cropped (DICOM)."""

    READER_FLIPPED_LR = "reader_flipped_lr"
    """Whether the reader mirrored the stored image left to right (DICOM), where it reports it."""

    HAS_MASK = "has_mask"
    """Whether the loaded lesion mask has any pixel (an empty one means the whole image)."""

    ORIG_SHAPE = "orig_shape"
    """(H, W) int64 of the image the reader returned, before the square box."""

    BOX = "box"
    """``[r0, c0, side]`` int64: the square of the reader's image resized to the network input
    (:func:`breastai.data.geometry.square_box`); maps go back with
    :func:`breastai.data.geometry.map_to_original`."""

    OUTLINE = "outline"
    """A (1, S, S) outline shown in the mask channel instead of the traced mask: coarse (ellipse or
    box, :class:`breastai.data.augment.RandCoarseOutlined`) or another reader's trace
    (:class:`breastai.data.augment.RandOutlineJitterd`) in training, smoothed in training and
    inference alike (:class:`breastai.data.transforms.SmoothOutlined`)."""

    RADIOMICS = "radiomics"
    """The lesion's radiomics feature vector (float32), for radiomics and fusion models; batch:
    (B, F)."""

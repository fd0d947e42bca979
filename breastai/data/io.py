"""Image and mask readers behind one pluggable entry point.

Every reader returns a 2D ``float32`` grey array (rows, columns) in the file's own intensity
units plus a metadata dict. Readers are tried in registration order; the first whose
``accepts(path)`` is true reads the file. DICOM registers itself from
``breastai.data.dicom`` when that module imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "ImageReadError",
    "register_reader",
    "load_image",
    "load_mask",
    "LesionBox",
    "mask_on_reader_grid",
    "stored_shape",
    "IMAGE_SUFFIXES",
    "image_suffix",
    "image_stem",
    "visible_files",
    "to_grey",
]

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm"}
# ".nii.gz" as one suffix: a bare ".gz" would make any gzip file (notes.csv.gz) an image.
IMAGE_SUFFIXES = PIL_SUFFIXES | {".nii", ".nii.gz", ".dcm", ".dicom"}


def visible_files(root: str | Path) -> list[Path]:
    """Files under ``root``, sorted, leaving out hidden files and everything in hidden folders.

    Hidden folders such as ``.ipynb_checkpoints`` hold copies of real images: listed, one image
    would sit on both sides of a split, or be scored twice.
    """
    root = Path(root)
    return [f for f in sorted(root.rglob("*"))
            if not any(part.startswith(".") for part in f.relative_to(root).parts) and f.is_file()]


def image_suffix(path: str | Path) -> str:
    """Lower-case suffix with ``.nii.gz`` kept together."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def image_stem(path: str | Path) -> str:
    """The file name without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(name))]


class ImageReadError(ValueError):
    """A file cannot be read as an image; the message names the file and the problem."""


@dataclass
class _Reader:
    name: str
    accepts: Callable[[Path], bool]
    read: Callable[..., tuple[np.ndarray, dict[str, Any]]]


_READERS: list[_Reader] = []


def register_reader(
    name: str,
    accepts: Callable[[Path], bool],
    read: Callable[..., tuple[np.ndarray, dict[str, Any]]],
    first: bool = False,
) -> None:
    """Add a reader.

    ``read(path, **options)`` returns ``(array2d_float32, meta)``; ``options`` are the
    entry ``reader_options[name]`` given to :func:`load_image`.
    """
    reader = _Reader(name, accepts, read)
    _READERS[:] = [r for r in _READERS if r.name != name]
    _READERS.insert(0, reader) if first else _READERS.append(reader)


def to_grey(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W) float32 grey from grey, grey+alpha, RGB or RGBA arrays (ITU-R 601 luma)."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        # ITU-R 601 luma, the same weights PIL uses for "L".
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        return arr[..., 0].astype(np.float32)
    raise ImageReadError(f"{path}: unsupported array shape {arr.shape} for a 2D image")


def _read_pil(path: Path, **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "PA" or (mode in ("P", "L", "RGB") and "transparency" in im.info):  # a tRNS colour is alpha
                im = im.convert("RGBA")
            elif mode == "P":
                im = im.convert("RGB")
            elif mode.startswith("I;16"):
                im = im.convert("I")
            elif mode not in ("1", "L", "LA", "I", "F", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, ... as RGB, not as channels
                im = im.convert("RGB")
            arr = np.asarray(im)
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: truncated or corrupt image ({exc})") from exc
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    return to_grey(arr, path), {"format": "pil", "mode": mode, "channels": channels, "alpha": channels in (2, 4)}


def _read_nifti(path: Path, **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib

    try:
        arr = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read NIfTI ({exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: NIfTI has shape {arr.shape}; a 2D image is expected")
    # NIfTI stores (x, y); images here are (rows, columns).
    return arr.T.copy(), {"format": "nifti"}


def _is_nifti(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


register_reader("nifti", _is_nifti, _read_nifti)
register_reader("pil", lambda p: p.suffix.lower() in PIL_SUFFIXES, _read_pil)

try:  # DICOM registers itself; the package works without it for plain images.
    from . import dicom as _dicom  # noqa: F401
except ImportError:
    pass


def load_image(
    path: str | Path, reader_options: dict[str, dict[str, Any]] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported image as a 2D float32 grey array.

    Args:
        path: the file.
        reader_options: per-reader keyword options, e.g. ``{"dicom": {"window_index": 1}}``.

    Raises:
        ImageReadError: missing, unsupported, unreadable or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    for reader in _READERS:
        if reader.accepts(path):
            arr, meta = reader.read(path, **(reader_options or {}).get(reader.name, {}))
            break
    else:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r}")
    if arr.size == 0 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: image has no pixels (shape {arr.shape})")
    meta.setdefault("reader", reader.name)
    meta["source_shape"] = tuple(int(s) for s in arr.shape)
    return arr, meta


def _mask_pixels(path: str | Path) -> np.ndarray:
    """Foreground of one mask file (see :func:`load_mask` for the alpha rule)."""
    arr, meta = load_image(path)
    if not meta.get("alpha"):
        return arr > 0
    from PIL import Image

    with Image.open(path) as im:
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    visible = alpha > 0
    fg = (arr > 0) & visible
    if not fg.any() and not visible.all():
        fg = visible
    return fg


def load_mask(paths: list[str] | str, shape: tuple[int, int] | None = None,
              meta: dict[str, Any] | None = None) -> np.ndarray:
    """Union of one or more mask files as a boolean array.

    Any non-zero pixel is foreground. In a mask with an alpha channel, transparent pixels are
    background whatever their colour, and a drawing in black on a transparent layer counts by its
    alpha (no visible pixel is non-zero in colour there). With ``shape``
    (the grid the image reader returned) and the reader's ``meta``, the mask is moved onto that
    grid by :func:`mask_on_reader_grid`.

    Raises:
        ImageReadError: unreadable mask, or a mask that fits neither ``shape`` nor the stored image.
    """
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    out: np.ndarray | None = None
    for p in paths:
        m = _mask_pixels(p)
        if out is None:
            out = m
        elif m.shape != out.shape:
            raise ImageReadError(f"{p}: mask shape {m.shape} differs from the other masks {out.shape}")
        else:
            out |= m
    if out is None:
        raise ImageReadError("no mask file given")
    return out if shape is None else mask_on_reader_grid(out, shape, meta, paths[0])


@dataclass(frozen=True)
class LesionBox:
    """A lesion given by its bounding box instead of a traced mask.

    ``x0 <= x <= x1`` (columns) and ``y0 <= y <= y1`` (rows), inclusive, in pixels of the image
    as stored (for DICOM: the original pixel grid, before any breast crop or flip by the reader).
    A crop-mode model trained with coarse outlines (``augment.coarse_outline``) reads it as it
    saw boxes in training; one trained on traced outlines only loses much of its accuracy.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def parse(cls, text: str) -> "LesionBox":
        """``"X0,Y0,X1,Y1"`` -> box.

        Raises:
            ValueError: not four integers, or a corner after the opposite one.
        """
        parts = [p.strip() for p in str(text).split(",")]
        try:
            x0, y0, x1, y1 = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"box {text!r}: expected four integers X0,Y0,X1,Y1 (pixels, inclusive)") from None
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {text!r}: X1 must be >= X0 and Y1 >= Y0")
        return cls(x0, y0, x1, y1)

    def to_mask(self, shape: tuple[int, int], meta: dict[str, Any] | None = None, source: str = "image") -> np.ndarray:
        """The filled box as a boolean mask on the reader's grid of ``shape``.

        The box is drawn on the stored image (``meta``'s ``rows`` x ``cols`` where the reader
        reports them, else ``shape``) and moved like any mask by :func:`mask_on_reader_grid`.

        Raises:
            ImageReadError: the box lies outside the image (or outside the reader's crop).
        """
        meta = meta or {}
        stored = stored_shape(shape, meta)
        mask = np.zeros(stored, dtype=bool)
        mask[max(self.y0, 0):max(self.y1 + 1, 0), max(self.x0, 0):max(self.x1 + 1, 0)] = True
        mask = mask_on_reader_grid(mask, shape, meta, source)
        if not mask.any():
            where = " or outside the part the reader kept" if meta.get("crop_box") is not None else ""
            raise ImageReadError(f"{source}: box {self.x0},{self.y0},{self.x1},{self.y1} lies outside the image "
                                 f"({stored[1]} x {stored[0]} pixels{where})")
        return mask


def stored_shape(shape: tuple[int, int], meta: dict[str, Any]) -> tuple[int, int]:
    """(rows, cols) of the image as stored: the reader's ``rows``/``cols`` if it reports them
    (DICOM), else ``shape``, the grid it returned."""
    if "rows" in meta and "cols" in meta:
        return int(meta["rows"]), int(meta["cols"])
    return tuple(int(v) for v in shape)


def mask_on_reader_grid(mask: np.ndarray, shape: tuple[int, int], meta: dict[str, Any] | None = None,
                        source: str = "mask") -> np.ndarray:
    """A boolean lesion mask on the grid of the image the reader returned (``shape``).

    Masks are drawn on the image as stored. Where the reader cropped or mirrored it (DICOM
    mammograms: breast crop, chest wall to the left), a mask of the stored size is moved the same
    way (:func:`breastai.data.mammo.to_reader_grid`); one already of the returned size is taken as is.

    Raises:
        ImageReadError: the mask fits neither size (``source`` names the mask).
    """
    meta = meta or {}
    mask = np.asarray(mask) > 0
    stored = stored_shape(shape, meta)
    moved = meta.get("crop_box") is not None or bool(meta.get("flipped_lr"))
    if moved and mask.shape == stored:
        from .mammo import to_reader_grid

        return to_reader_grid(mask, meta)
    if mask.shape == tuple(shape):
        return mask
    sizes = f"image shape {tuple(shape)}" + (f" (stored {stored})" if stored != tuple(shape) else "")
    raise ImageReadError(f"{source}: mask shape {mask.shape} does not match {sizes}")

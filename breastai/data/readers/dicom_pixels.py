"""Pixel data of a DICOM image: its declared size, its agreement with the header, its decoding.

Three checks come before a pixel is decoded, each refusing with a message that names the file:

- :func:`check_declared_pixels`: Rows x Columns x the frames to decode against the size limit
  (``reader_options["max_pixels"]``), from a header read without the pixel data.
- :func:`check_pixel_data`: native (uncompressed) pixel data must hold the bytes Rows x Columns x
  SamplesPerPixel x frames x BitsAllocated call for (less than a frame more is taken as padding);
  a JPEG, JPEG-LS or JPEG 2000 frame must be the size the header says. A header that misstates the size otherwise yields a scrambled image cut
  to the wrong shape (a 512x512 image read as a 7x18 strip), or lets a small header hide a huge
  codestream past the size limit.
- :func:`decode` turns what pydicom raises or warns about the pixel data into the same kind of
  message.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from breastai.data.readers.registry import ImageReadError, check_declared_size

__all__ = ["n_frames", "check_declared_pixels", "check_pixel_data", "decode"]

# Start-of-frame markers of the JPEG family (ITU T.81 B.1.1.3) and JPEG-LS (SOF55, T.87).
_JPEG_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
# JPEG markers without a length field (T.81 B.1.1.2): TEM, RSTn, SOI, EOI.
_JPEG_BARE = {0x01, *range(0xD0, 0xDA)}
# What pydicom says when the pixel data does not fit the header (versions 2.4 - 3.0).
_MISFIT = ("less than expected", "doesn't match the expected", "could not broadcast", "cannot reshape")
_RLE_PADDING = re.compile(r"non-conformant padding - (\d+) vs\. (\d+) bytes")


def n_frames(ds: Dataset) -> int:
    """NumberOfFrames of a header (1 where absent or not a number)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _size(ds: Dataset) -> tuple[int, int]:
    return int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)


def _says(ds: Dataset) -> str:
    rows, cols = _size(ds)
    return f"{rows} rows x {cols} columns"


def check_declared_pixels(header: Dataset, path: Path, frames: int, max_pixels: int) -> None:
    """Refuse a header whose Rows x Columns x ``frames`` (the frames to decode) is over ``max_pixels``.

    Raises:
        ImageReadError: over the limit (see :func:`breastai.data.readers.registry.check_declared_size`).
    """
    rows, cols = _size(header)
    declared = f"{_says(header)}" + (f" x {frames} frames to decode" if frames > 1 else "")
    check_declared_size(path, declared, rows * cols * frames, max_pixels)


def check_pixel_data(ds: Dataset, path: Path, index: int | None) -> None:
    """Refuse pixel data that the header's image size does not describe, before decoding.

    Args:
        ds: the dataset with its pixel data.
        path: the file, for messages.
        index: the frame to be decoded (None: all).

    Raises:
        ImageReadError: native data shorter than the header calls for, or longer by a frame or
            more, or a JPEG-family frame whose own size differs from Rows x Columns.
    """
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if not ts.is_encapsulated:
        _check_native_length(ds, path)
    elif ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes or ts in JPEG2000TransferSyntaxes:
        _check_codestreams(ds, path, index, "JPEG 2000" if ts in JPEG2000TransferSyntaxes else "JPEG")


def _check_native_length(ds: Dataset, path: Path) -> None:
    key = next((k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if key is None:
        return
    rows, cols = _size(ds)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0) or {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(key, 16)
    frames = n_frames(ds)
    expected = -(-rows * cols * spp * frames * bits // 8)  # whole bytes; 1-bit data is packed
    if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
        expected = expected // 3 * 2  # two chroma samples per two pixels (PS3.5 8.2.1)
    actual = len(ds[key].value or b"")
    frame_bytes = -(-rows * cols * spp * bits // 8)
    # Bytes beyond what the header counts are padding while they come to less than one frame (as
    # pydicom reads them: one pad byte is standard, PS3.5 7.1.1, and some writers pad further); a
    # whole frame or more means Rows, Columns or NumberOfFrames misstate the image.
    if actual >= expected and actual - expected < max(frame_bytes, 2):
        return
    per_pixel = max(spp * bits / 8, 1 / 8)
    layout = (f"{_says(ds)}" + (f" x {frames} frames" if frames > 1 else "")
              + (f" x {spp} samples" if spp > 1 else "") + f" at {bits} bits")
    if actual < expected:
        raise ImageReadError(f"{path}: truncated or corrupt DICOM file: header says {layout} = {expected} bytes of "
                             f"pixel data, but only {actual} bytes are there (a file cut short, or a header whose "
                             "Rows/Columns/NumberOfFrames overstate its pixel data)")
    raise ImageReadError(f"{path}: header says {layout} = {expected} bytes of pixel data, but the pixel data holds "
                         f"{actual} bytes, enough for {int(actual / per_pixel)} pixels; the header does not describe "
                         "its pixel data (wrong Rows, Columns or NumberOfFrames), refused rather than decoded to a "
                         "scrambled image")


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG or JPEG-LS codestream from its start-of-frame segment."""
    i = 2 if frame[:2] == b"\xff\xd8" else -1
    while 0 <= i < min(len(frame) - 9, 1 << 20):
        if frame[i] != 0xFF:
            return None
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            rows, cols = struct.unpack(">HH", frame[i + 5:i + 9])
            return (rows, cols) if rows else None  # 0 rows: the height comes later, in a DNL segment
        elif marker in _JPEG_BARE:
            i += 2
        else:
            i += 2 + struct.unpack(">H", frame[i + 2:i + 4])[0]
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG 2000 codestream from its SIZ segment (ISO 15444-1 A.5.1)."""
    i = frame.find(b"\xff\x4f\xff\x51", 0, 1 << 16)  # SOC then SIZ; a JP2 file has boxes before them
    if i < 0 or len(frame) < i + 24:
        return None
    xsiz, ysiz, x0, y0 = struct.unpack(">IIII", frame[i + 8:i + 24])
    return ysiz - y0, xsiz - x0


def _check_codestreams(ds: Dataset, path: Path, index: int | None, codec: str) -> None:
    frames = n_frames(ds)
    try:
        chosen = ([(index, get_frame(ds.PixelData, index, number_of_frames=frames))] if index is not None
                  else enumerate(generate_frames(ds.PixelData, number_of_frames=frames)))
        sizes = [(k, (_j2k_size if codec == "JPEG 2000" else _jpeg_size)(f)) for k, f in chosen]
    except Exception:  # noqa: BLE001 - broken encapsulation: decode() reports it
        return
    header = _size(ds)
    for k, size in sizes:
        if size is not None and size != header:
            raise ImageReadError(f"{path}: header says {_says(ds)}, but the {codec} codestream of frame {k} is "
                                 f"{size[0]} rows x {size[1]} columns; the header does not describe its pixel data")


def decode(ds: Dataset, path: Path, index: int | None) -> np.ndarray:
    """The stored pixel values of frame ``index`` (None: all frames), as pydicom decodes them.

    Raises:
        ImageReadError: no decoder or plugin for the transfer syntax, pixel data that does not fit
            the header, or any other decoding failure.
    """
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    what = f"transfer syntax {ts.name!r} ({ts})"
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise ImageReadError(f"{path}: cannot decode pixel data: no decoder exists for {what}") from exc
    if not decoder.is_available:
        missing = "; ".join(str(m) for m in getattr(decoder, "missing_dependencies", []))
        raise ImageReadError(f"{path}: cannot decode pixel data: no installed plugin for {what} (install one of: {missing})")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr = pixel_array(ds, index=index)
    except Exception as exc:  # decoders raise RuntimeError/ValueError/...
        if any(m in str(exc) for m in _MISFIT):
            raise ImageReadError(f"{path}: the pixel data does not fit the header's {_says(ds)} (the file is "
                                 f"truncated or its header is wrong): {type(exc).__name__}: {exc}") from exc
        raise ImageReadError(f"{path}: decoding {what} failed ({type(exc).__name__}: {exc})") from exc
    rows, cols = _size(ds)
    for w in caught:
        found = _RLE_PADDING.search(str(w.message))
        # pydicom decodes an RLE segment longer than Rows x Columns and keeps its start; a segment
        # of twice that or more (a frame's worth of extra bytes) means the header undercounts.
        if found and int(found[1]) - int(found[2]) >= max(rows * cols, 2):
            raise ImageReadError(f"{path}: header says {_says(ds)} = {found[2]} bytes per RLE segment, but the "
                                 f"segments decode to {found[1]} bytes; the header does not describe its pixel data")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return arr

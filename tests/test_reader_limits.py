"""Reader hardening: the declared-size limit (every reader, masks too) and non-finite pixels refused.

The huge images here are small on disk (a 1-bit PNG of zeros, a DICOM or NIfTI header without the
pixel data it declares): each test checks the refusal comes from the header, quickly, without
allocating what decoding would.
"""

from __future__ import annotations

import struct
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from breastai.core.config import load_config
from breastai.data.readers import dicom as D
from breastai.data.readers.registry import ImageReadError, load_image
from breastai.data.transforms import LoadSampled, build_transforms

sys.path.insert(0, str(Path(__file__).parent))
from test_dicom import phantom, write_dicom  # noqa: E402

LARGEST_MAMMOGRAM = (5355, 4915)  # rows x columns of the largest shared DICOM


def bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG, written row by row: 13000x13000 takes 20 KB on disk and in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return bilevel_png(tmp_path_factory.mktemp("huge") / "bomb.png", 13000, 13000)


def _refused_quickly(call, *match: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError) as e:
        call()
    # Decoding 169 M pixels takes seconds and about a gigabyte; reading a header takes milliseconds.
    assert time.perf_counter() - t0 < 2.0
    for m in match:
        assert m in str(e.value), str(e.value)
    return str(e.value)


def test_png_declaring_13000x13000_is_refused_from_its_header(huge_png):
    assert huge_png.stat().st_size < 100_000
    msg = _refused_quickly(lambda: load_image(huge_png), "bomb.png", "13000x13000", "169,000,000 pixels",
                           "limit of 50,000,000", "data.reader_options.max_pixels")
    assert "refused before decoding" in msg


def test_largest_real_mammogram_size_passes_the_default_limit(tmp_path):
    from breastai.data.readers.registry import DEFAULT_MAX_PIXELS

    rows, cols = LARGEST_MAMMOGRAM
    assert rows * cols < DEFAULT_MAX_PIXELS
    arr, _ = load_image(bilevel_png(tmp_path / "big.png", cols, rows))
    assert arr.shape == (rows, cols)


def test_limit_is_a_top_level_reader_option_set_from_the_config(tmp_path):
    Image.fromarray(np.arange(100 * 120, dtype=np.uint32).reshape(100, 120).astype(np.uint8)).save(tmp_path / "i.png")
    p = tmp_path / "i.png"
    assert load_image(p, {"max_pixels": 12_000})[0].shape == (100, 120)
    _refused_quickly(lambda: load_image(p, {"max_pixels": 11_999}), "i.png", "120x100", "limit of 11,999")
    assert load_image(p, {"max_pixels": "1e8"})[0].shape == (100, 120)  # YAML reads 1e8 as text
    with pytest.raises(ImageReadError, match="positive whole number"):
        load_image(p, {"max_pixels": "lots"})
    sample = {"image": str(p), "label": "benign", "case_id": "c", "group": "g"}
    low = load_config(None, ["data.reader_options.max_pixels=11999"])
    with pytest.raises(ImageReadError, match="max_pixels"):
        build_transforms(low, train=False)(sample)
    assert build_transforms(load_config(None, []), train=False)(sample)["image"].shape[0] == 1


def test_mask_files_are_read_under_the_same_limit(tmp_path, huge_png):
    img = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    Image.fromarray((img > 128).astype(np.uint8) * 255).save(tmp_path / "m.png")
    ok = LoadSampled()({"image": str(tmp_path / "i.png"), "mask": [str(tmp_path / "m.png")]})
    assert ok["has_mask"] and ok["mask"].shape == (1, 64, 64)
    _refused_quickly(lambda: LoadSampled()({"image": str(tmp_path / "i.png"), "mask": [str(huge_png)]}),
                     "bomb.png", "13000x13000")
    # The image (64x64) passes a limit of 4096 pixels, its mask (64x65) does not.
    with pytest.raises(ImageReadError, match=r"m\.png: header declares 64x65 pixels.*limit of 4,096"):
        LoadSampled({"max_pixels": 4096})({"image": str(tmp_path / "i.png"),
                                                      "mask": [str(bilevel_png(tmp_path / "m.png", 64, 65))]})


def test_dicom_declaring_a_huge_size_is_refused_before_its_pixel_data_is_read(tmp_path):
    p = write_dicom(tmp_path / "huge.dcm", phantom())
    ds = pydicom.dcmread(p)
    ds.Rows = ds.Columns = 13000
    ds.save_as(p)
    _refused_quickly(lambda: load_image(p), "huge.dcm", "13000 rows x 13000 columns", "169,000,000 pixels")


def test_dicom_limit_counts_the_frames_decoded(tmp_path):
    frames = np.stack([phantom()] * 5)  # 5 x 200 x 160 = 160000 pixels
    p = write_dicom(tmp_path / "mf.dcm", frames, frames=True)
    assert D.read_dicom(p, frame="middle", max_pixels=40_000).pixels.ndim == 2
    _refused_quickly(lambda: D.read_dicom(p, frame="all", max_pixels=40_000), "mf.dcm", "x 5 frames to decode",
                     "160,000 pixels")
    assert D.read_dicom(p, frame="all", max_pixels=160_000).pixels.shape[0] == 5
    assert load_image(p, {"max_pixels": 40_000, "dicom": {"frame": 2}})[0].ndim == 2


def test_nifti_declaring_a_huge_size_is_refused_from_its_header(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape((13000, 13000))
    p = tmp_path / "huge.nii"
    p.write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000)  # header, extension flag, a sliver of data
    _refused_quickly(lambda: load_image(p), "huge.nii", "13000x13000 voxels", "169,000,000 pixels")
    small = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.ones((40, 50), np.float32), np.eye(4)), str(small))
    assert load_image(small)[0].shape == (50, 40)
    with pytest.raises(ImageReadError, match="limit"):
        load_image(small, {"max_pixels": 1999})


def _float_tiff(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.float32), mode="F").save(path)
    return path


def test_partly_nan_float_image_is_refused_naming_the_file_and_the_count(tmp_path):
    arr = np.random.default_rng(0).random((64, 64)).astype(np.float32) * 1000
    finite = _float_tiff(tmp_path / "ok.tif", arr)
    out = LoadSampled()({"image": str(finite)})  # a finite float image still works, values kept
    np.testing.assert_allclose(out["image"][0], arr, rtol=1e-6)
    arr[3, :3] = np.nan
    arr[9, 9] = np.inf
    bad = _float_tiff(tmp_path / "nan.tif", arr)
    with pytest.raises(ImageReadError, match=r"nan\.tif: 4 of 4096 pixels are not finite"):
        LoadSampled()({"image": str(bad)})
    nii = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr.T.copy(), np.eye(4)), str(nii))
    with pytest.raises(ImageReadError, match=r"nan\.nii\.gz: 4 of 4096 pixels are not finite"):
        LoadSampled()({"image": str(nii)})


def test_array_input_with_infinite_pixels_is_refused():
    arr = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    assert LoadSampled()({"image": arr})["image"].shape == (1, 40, 40)
    arr[0, 0] = -np.inf
    with pytest.raises(ImageReadError, match=r"<array>: 1 of 1600 pixels are not finite"):
        LoadSampled()({"image": arr})


def test_predict_reports_a_partly_nan_array_as_an_error_record(predictor):
    arr = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    assert predictor.predict(arr, saliency="none")[0]["error"] is None
    arr[10:12, 10:12] = np.nan
    rec = predictor.predict(arr, saliency="none")[0]
    assert rec["probability"] is None and "4 of 4096 pixels are not finite" in rec["error"]

"""DICOM reader on synthetic files written by pydicom: one test per branch of the pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_windowing, convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, UID, generate_uid

from breastai.data.geometry import undo_geometry
from breastai.data.readers import dicom as D
from breastai.data.readers import dicom_header as H
from breastai.data.readers.registry import ImageReadError, load_image

MG_SOP = "1.2.840.10008.5.1.4.1.1.1.2"
US_SOP = "1.2.840.10008.5.1.4.1.1.6.1"
PHI = {"PatientName": "Doe^Jane", "PatientID": "SECRET123", "StudyDate": "20200101", "AccessionNumber": "ACC999"}


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                modality: str | None = "MG", sop: str = MG_SOP, ts: str = ExplicitVRLittleEndian, frames: bool = False,
                **elements) -> Path:
    """Minimal valid DICOM Part 10 file holding ``pixels`` (H,W), (F,H,W), (H,W,3) or (F,H,W,3)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for k, v in PHI.items():
        setattr(ds, k, v)
    if modality:
        ds.Modality = modality
    colour = pixels.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2")
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for k, v in elements.items():
        setattr(ds, k, v)
    if ts != ExplicitVRLittleEndian:
        ds.compress(ts, generate_instance_uid=False)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def phantom(right: bool = False, lesion: tuple[int, int] = (100, 40)) -> np.ndarray:
    """200x160 12-bit mammogram, MONOCHROME2: breast half-disc on the chest-wall side (left, or
    right if ``right``), a dense lesion, and a bright label in the opposite top corner."""
    h, w = 200, 160
    rr, cc = np.mgrid[:h, :w]
    img = np.full((h, w), 20, dtype=np.uint16)  # background / air
    breast = (rr - 100) ** 2 / 90**2 + cc**2 / 110**2 <= 1
    img[breast] = 2000 + (cc[breast] < 30) * 300  # denser near the chest wall
    img[(rr - lesion[0]) ** 2 + (cc - lesion[1]) ** 2 <= 36] = 3500
    img[5:15, 140:155] = 4000  # burnt-in marker, not connected to the breast
    return img[:, ::-1].copy() if right else img


def test_mono2_window_crop_and_phi(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", phantom(), bits_stored=12, WindowCenter=[2500, 2000], WindowWidth=[2000, 1000],
                    ImageLaterality="L", ViewPosition="CC", PatientOrientation=["A", "R"])
    img = D.read_dicom(p)
    assert img.pixels.dtype == np.float32 and 0 <= img.pixels.min() and img.pixels.max() <= 1
    assert not img.flipped_lr and img.meta["laterality"] == "L" and img.meta["view"] == "CC"
    r0, r1, c0, c1 = img.crop_box
    assert c0 == 0 and c1 < 140, "crop must keep the chest wall and drop the marker"
    assert 5 <= r0 <= 15 and 185 <= r1 <= 195
    assert img.pixels.shape == (r1 - r0, c1 - c0)
    # LINEAR window 2500/2000: 2000 -> (2000 - 2499.5)/1999 + 0.5
    assert img.pixels[100 - r0, 80 - c0] == pytest.approx((2000 - 2499.5) / 1999 + 0.5, abs=1e-5)
    assert D.read_dicom(p, window_index=1).pixels[100 - r0, 80 - c0] == pytest.approx((2000 - 1999.5) / 999 + 0.5, abs=1e-5)
    with pytest.raises(ImageReadError, match="window_index 2"):
        D.read_dicom(p, window_index=2)
    text = repr(img.meta)
    for v in list(PHI.values()):
        assert v not in text
    ds = pydicom.dcmread(p)
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert str(uid) not in text
    assert img.meta["sop_uid_hash"] == hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:16]
    arr, meta = load_image(p)
    np.testing.assert_array_equal(arr, img.pixels)
    assert meta["reader"] == "dicom"


def test_monochrome1_is_inverted_and_padding_zero(tmp_path):
    base = phantom()
    mono1 = (4095 - base).astype(np.uint16)
    mono1[:, 150:] = 4095  # padding band (would be white after inversion if not masked... it is 0 anyway)
    mono1[190:, :20] = 4090  # padding range 4090..4095 at the chest side corner
    p = write_dicom(tmp_path / "m1.dcm", mono1, photometric="MONOCHROME1", bits_stored=12, PixelPaddingValue=4095,
                    PixelPaddingRangeLimit=4090, WindowCenter=4095 - 2500 + 1, WindowWidth=2000, ImageLaterality="L")
    img = D.read_dicom(p, crop_breast=False)
    ref = D.read_dicom(write_dicom(tmp_path / "m2.dcm", base, bits_stored=12, WindowCenter=2500, WindowWidth=2000,
                                   ImageLaterality="L"), crop_breast=False)
    assert img.meta["inverted"] and not ref.meta["inverted"]
    assert img.pixels[100, 80] == pytest.approx(ref.pixels[100, 80], abs=2e-3)
    assert img.pixels[100, 40] > img.pixels[100, 80] > img.pixels[20, 130], "lesion > breast > background"
    assert (img.pixels[190:, :20] == 0).all() and (img.pixels[:, 150:] == 0).all()


def test_presentation_lut_inverse_with_mono1_inverts_once(tmp_path):
    mono1 = (4095 - phantom()).astype(np.uint16)
    p = write_dicom(tmp_path / "inv.dcm", mono1, photometric="MONOCHROME1", bits_stored=12, PresentationLUTShape="INVERSE",
                    ImageLaterality="L")
    img = D.read_dicom(p, crop_breast=False)
    assert img.pixels[100, 40] > img.pixels[100, 80] > img.pixels[20, 130]


def test_voi_lut_sequence_and_index(tmp_path):
    items = []
    for first, scale in ((1000, 1), (0, 2)):
        it = Dataset()
        it.add_new(0x00283002, "US", [2048, first, 12])  # LUT Descriptor
        it.add_new(0x00283006, "US", [min(4095, i * scale) for i in range(2048)])  # LUT Data
        it.LUTExplanation = f"LUT{scale}"
        items.append(it)
    p = write_dicom(tmp_path / "voi.dcm", phantom(), bits_stored=12, VOILUTSequence=Sequence(items),
                    WindowCenter=[1, 1], WindowWidth=[1, 1], ImageLaterality="L")
    img = D.read_dicom(p, crop_breast=False)
    assert img.meta["voi"] == "lut" and img.meta["voi_explanation"] == "LUT1"
    assert img.pixels[100, 80] == pytest.approx((2000 - 1000) / 4095, abs=1e-6)
    assert img.pixels[100, 40] == pytest.approx(2047 / 4095, abs=1e-6)  # beyond the table: last entry
    assert img.pixels[150, 140] == 0  # below first mapped value: first entry
    img2 = D.read_dicom(p, crop_breast=False, window_index=1)
    assert img2.pixels[100, 80] == pytest.approx(min(4095, 2000 * 2) / 4095, abs=1e-6) or img2.pixels[100, 80] == pytest.approx(2047 * 2 / 4095)
    win = D.read_dicom(p, crop_breast=False, voi_source="window")
    assert win.meta["voi"] == "window"
    raw = D.read_dicom(p, crop_breast=False, apply_voi=False)
    assert raw.meta["voi"] == "none" and raw.pixels.max() == pytest.approx(1.0)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(tmp_path, function):
    p = write_dicom(tmp_path / "w.dcm", phantom(), bits_stored=12, WindowCenter=2100, WindowWidth=700,
                    VOILUTFunction=function, ImageLaterality="L")
    img = D.read_dicom(p, crop_breast=False)
    ds = pydicom.dcmread(p)
    ref = apply_windowing(ds.pixel_array.astype(np.float64), ds) / 4095.0  # pydicom output range 0..2^12-1
    np.testing.assert_allclose(img.pixels, ref, atol=1e-5)


def test_rescale_and_signed_and_bits_stored(tmp_path):
    base = phantom().astype(np.int16) - 2048  # signed 12-bit stored values
    p = write_dicom(tmp_path / "s.dcm", base, bits_stored=12, RescaleSlope=2, RescaleIntercept=100,
                    WindowCenter=2 * (2000 - 2048) + 100, WindowWidth=400, VOILUTFunction="LINEAR_EXACT", ImageLaterality="L")
    img = D.read_dicom(p, crop_breast=False)
    assert img.pixels[100, 80] == pytest.approx(0.5, abs=1e-6)
    # garbage in the unused high bits of an unsigned 12-bit image changes nothing
    clean = phantom()
    dirty = clean | np.uint16(0xF000) * (np.arange(clean.size).reshape(clean.shape) % 2).astype(np.uint16)
    a = D.read_dicom(write_dicom(tmp_path / "c.dcm", clean, bits_stored=12, WindowCenter=2048, WindowWidth=4096), crop_breast=False)
    b = D.read_dicom(write_dicom(tmp_path / "d.dcm", dirty, bits_stored=12, WindowCenter=2048, WindowWidth=4096), crop_breast=False)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_modality_lut_sequence(tmp_path):
    it = Dataset()
    it.add_new(0x00283002, "US", [4096, 0, 16])
    it.add_new(0x00283006, "US", [4095 - i for i in range(4096)])
    it.ModalityLUTType = "US"
    p = write_dicom(tmp_path / "mlut.dcm", phantom(), bits_stored=12, ModalityLUTSequence=Sequence([it]),
                    WindowCenter=4095 - 2000, WindowWidth=1, ImageLaterality="L")
    img = D.read_dicom(p, crop_breast=False, canonical=False)
    # modality LUT reverses the scale, so the 2000-valued tissue sits right at the threshold
    assert img.pixels[100, 80] == 1.0 and img.pixels[100, 40] == 0.0


def test_rgb_ultrasound_overlay_inpainted(tmp_path):
    grey = np.tile(np.linspace(40, 200, 120, dtype=np.float32), (100, 1))
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    rgb[50, 20:100] = (255, 255, 0)  # yellow caliper line
    p = write_dicom(tmp_path / "us.dcm", rgb, photometric="RGB", modality="US", sop=US_SOP)
    img = D.read_dicom(p)
    assert img.pixels.shape == (100, 120) and img.crop_box is None and not img.flipped_lr
    np.testing.assert_allclose(img.pixels[50], img.pixels[49], atol=2 / 255)  # line replaced by tissue grey
    assert 0 < img.meta["colour_overlay_fraction"] < 0.01
    lum = D.read_dicom(p, colour_overlay="luminance")
    assert lum.pixels[50, 60] == pytest.approx((0.299 + 0.587) * 255 / 255, abs=1e-3)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    img_ybr = D.read_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL", modality="US", sop=US_SOP))
    np.testing.assert_allclose(img_ybr.pixels, img.pixels, atol=3 / 255)


def test_multiframe_policies(tmp_path):
    frames = np.stack([phantom() // 4 * (k + 1) // 2 + 0 for k in range(5)]).astype(np.uint16)
    frames[:, 10, 10] = np.arange(5) * 100 + 7  # frame id written in a background pixel
    p = write_dicom(tmp_path / "mf.dcm", frames, bits_stored=12, frames=True, ImageLaterality="L")
    assert D.dicom_frame_count(p) == 5
    opts = dict(canonical=False, crop_breast=False, apply_voi=False)
    raw = pydicom.dcmread(p).pixel_array

    def frame_of(img2d):
        return int(np.argmin([np.abs(img2d - D.read_dicom(p, frame=k, **opts).pixels).sum() for k in range(5)]))

    mid = D.read_dicom(p, **opts)
    assert mid.pixels.ndim == 2 and mid.meta["frames"] == [2]
    assert D.read_dicom(p, frame=-1, **opts).meta["frames"] == [4]
    assert frame_of(mid.pixels) == 2
    allf = D.read_dicom(p, frame="all")
    stack = D.read_dicom(p, frame="stack")
    assert allf.pixels.shape[0] == 5 and allf.pixels.shape == stack.pixels.shape
    r0, r1, c0, c1 = allf.crop_box
    assert allf.pixels.shape[1:] == (r1 - r0, c1 - c0)
    assert allf.meta["frame_policy"] == "all" and stack.meta["frame_policy"] == "stack"
    assert raw.shape == (5, 200, 160)
    with pytest.raises(ImageReadError, match="frame 7"):
        D.read_dicom(p, frame=7)
    with pytest.raises(ImageReadError, match="2D image"):
        load_image(p, reader_options={"dicom": {"frame": "all"}})
    arr, _ = load_image(p, reader_options={"dicom": {"frame": 1, **opts}})
    np.testing.assert_array_equal(arr, D.read_dicom(p, frame=1, **opts).pixels)


def test_enhanced_functional_groups(tmp_path):
    shared = Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = 2500, 2000, "LINEAR"
    anat = Dataset()
    anat.FrameLaterality = "R"
    shared.FrameVOILUTSequence = Sequence([voi])
    shared.FrameAnatomySequence = Sequence([anat])
    frames = np.stack([phantom(right=True)] * 3)
    p = write_dicom(tmp_path / "bt.dcm", frames, bits_stored=12, frames=True, sop="1.2.840.10008.5.1.4.1.1.13.1.3",
                    modality=None, SharedFunctionalGroupsSequence=Sequence([shared]))
    img = D.read_dicom(p)
    assert img.meta["modality"] == "MG" and img.meta["laterality"] == "R" and img.meta["laterality_source"] == "FrameLaterality"
    assert img.meta["voi"] == "window" and img.flipped_lr


def test_missing_pixel_data(tmp_path):
    p = write_dicom(tmp_path / "np.dcm", phantom())
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    with pytest.raises(ImageReadError, match="no pixel data") as e:
        D.read_dicom(p)
    assert "np.dcm" in str(e.value)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
def test_truncated_file_is_named_truncated(tmp_path, ts):
    p = write_dicom(tmp_path / "cut.dcm", phantom(), bits_stored=12, ts=ts)
    p.write_bytes(p.read_bytes()[:-300])  # cut inside the pixel data (encapsulated for RLE)
    with pytest.raises(ImageReadError, match="truncated or corrupt") as e:
        load_image(p)
    assert "cut.dcm" in str(e.value) and "no pixel data" not in str(e.value)


def test_undecodable_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate

    p = write_dicom(tmp_path / "mpeg.dcm", phantom())
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder anywhere
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    pydicom.dcmwrite(p, ds, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100") as e:
        D.read_dicom(p)
    assert "mpeg.dcm" in str(e.value)


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless])
def test_compressed_round_trip(tmp_path, ts):
    ref = D.read_dicom(write_dicom(tmp_path / "raw.dcm", phantom(), bits_stored=12, WindowCenter=2500, WindowWidth=2000))
    img = D.read_dicom(write_dicom(tmp_path / "c.dcm", phantom(), bits_stored=12, ts=ts, WindowCenter=2500, WindowWidth=2000))
    assert img.meta["transfer_syntax_uid"] == ts
    np.testing.assert_array_equal(img.pixels, ref.pixels)


def _centroid(m: np.ndarray) -> np.ndarray:
    return np.argwhere(m).mean(axis=0)


@pytest.mark.parametrize("header", ["laterality", "orientation", "none"])
def test_right_breast_flip_and_undo_geometry(tmp_path, header):
    img0 = phantom(right=True, lesion=(70, 40))
    lesion_rc = np.array([70, 160 - 1 - 40])  # where the lesion is in the stored (right-breast) grid
    extra = {"laterality": {"ImageLaterality": "R"}, "orientation": {"PatientOrientation": ["P", "L"]}, "none": {}}[header]
    p = write_dicom(tmp_path / "r.dcm", img0, bits_stored=12, WindowCenter=2500, WindowWidth=3000, **extra)
    img = D.read_dicom(p)
    assert img.flipped_lr
    if header == "none":
        assert img.meta["orientation_source"] == "content" and img.meta["laterality"] == "R"
        assert img.meta["laterality_source"] == "content"
    q = img.pixels.shape[1] // 4
    assert img.pixels[:, :q].mean() > img.pixels[:, -q:].mean(), "chest wall (dense side) must be on the left"
    lesion_map = (img.pixels > 0.8).astype(np.float32)
    back = undo_geometry(lesion_map, img)
    assert back.shape == img0.shape
    np.testing.assert_allclose(_centroid(back > 0.5), lesion_rc, atol=0.5)
    small = np.asarray(lesion_map[::4, ::4])  # coarser map, e.g. a saliency map
    back2 = undo_geometry(small, img.meta)
    np.testing.assert_allclose(_centroid(back2 > 0.5), lesion_rc, atol=3)


def test_for_processing_refused_or_handled(tmp_path):
    # raw detector signal: linear in intensity, dense tissue lets fewer photons through
    intensity = (4095 - phantom()).astype(np.uint16)
    p = write_dicom(tmp_path / "fp.dcm", intensity, sop="1.2.840.10008.5.1.4.1.1.1.2.1", PresentationIntentType="FOR PROCESSING",
                    PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=1, ImageLaterality="L")
    with pytest.raises(ImageReadError, match="FOR PROCESSING"):
        D.read_dicom(p)
    img = D.read_dicom(p, allow_for_processing=True, crop_breast=False)
    assert img.meta["voi"] == "for-processing-percentiles"
    assert 0 <= img.pixels.min() and img.pixels.max() <= 1
    assert img.pixels[100, 40] > img.pixels[100, 80] > img.pixels[20, 130]


def test_is_dicom_and_suffixless_load(tmp_path):
    p = write_dicom(tmp_path / "x.dcm", phantom(), WindowCenter=2500, WindowWidth=2000)
    bare = tmp_path / "IM0001"
    bare.write_bytes(p.read_bytes())
    (tmp_path / "notes.txt").write_text("hello")
    assert H.is_dicom(bare) and H.is_dicom(p) and not H.is_dicom(tmp_path / "notes.txt")
    arr, meta = load_image(bare)
    assert meta["reader"] == "dicom" and arr.ndim == 2


def test_view_from_code_sequence(tmp_path):
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10226", "SRT", "medio-lateral oblique"
    p = write_dicom(tmp_path / "v.dcm", phantom(), ViewCodeSequence=Sequence([code]), Laterality="L")
    m = D.read_dicom(p).meta
    assert m["view"] == "MLO" and m["laterality"] == "L" and m["laterality_source"] == "Laterality"


def test_group_dicom_folder(tmp_path):
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    (tmp_path / "sub").mkdir()
    for i, (series, inst) in enumerate([(s1, 3), (s1, 1), (s2, 1), (s1, 2)]):
        write_dicom(tmp_path / "sub" / f"f{i}.dcm", phantom(), StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=inst)
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "sub" / ".ipynb_checkpoints").mkdir()  # a notebook's copy is not a second instance
    write_dicom(tmp_path / "sub" / ".ipynb_checkpoints" / "f1.dcm", phantom(), StudyInstanceUID=study,
                SeriesInstanceUID=s1, InstanceNumber=1)
    groups = D.group_dicom_folder(tmp_path)
    assert len(groups) == 2
    key1 = (H.uid_hash(study), H.uid_hash(s1))
    assert [p.name for p in groups[key1]] == ["f1.dcm", "f3.dcm", "f0.dcm"]
    assert len(groups[(H.uid_hash(study), H.uid_hash(s2))]) == 1
    assert len(groups.notes) == 1 and "readme.txt" in groups.notes[0]


def test_not_dicom_error(tmp_path):
    p = tmp_path / "fake.dcm"
    p.write_bytes(b"this is not dicom at all" * 10)
    with pytest.raises(ImageReadError, match="fake.dcm"):
        D.read_dicom(p)


def test_8bit_grey_ultrasound_keeps_contrast(tmp_path):
    img8 = np.tile(np.linspace(30, 150, 64).astype(np.uint8), (48, 1))
    p = write_dicom(tmp_path / "usg.dcm", img8, modality="US", sop=US_SOP)
    img = D.read_dicom(p)
    assert img.meta["voi"] == "bit-depth" and img.crop_box is None
    np.testing.assert_allclose(img.pixels, img8 / 255.0, atol=1e-6)


def test_decoder_plugin_missing(tmp_path, monkeypatch):
    class NoPlugin:
        is_available = False
        missing_dependencies = ["pyjpegls - requires pyjpegls>=1.2"]

    p = write_dicom(tmp_path / "ls.dcm", phantom())
    monkeypatch.setattr("breastai.data.readers.dicom_pixels.get_decoder", lambda uid: NoPlugin())
    with pytest.raises(ImageReadError, match=r"no installed plugin .*Explicit VR Little Endian.*pyjpegls"):
        D.read_dicom(p)



def test_palette_colour_to_grey(tmp_path):
    idx = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    extra = {}
    for i, name in enumerate(("Red", "Green", "Blue")):
        p_ds = Dataset()
        p_ds.add_new(0x00281101 + i, "US", [256, 0, 16])  # <colour> Palette Color LUT Descriptor
        p_ds.add_new(0x00281201 + i, "OW", (np.arange(256, dtype=np.uint16) * 256).tobytes())  # grey ramp
        extra[f"{name}PaletteColorLookupTableDescriptor"] = p_ds[0x00281101 + i].value
        extra[f"{name}PaletteColorLookupTableData"] = p_ds[0x00281201 + i].value
    p = write_dicom(tmp_path / "pal.dcm", idx, photometric="PALETTE COLOR", modality="US", sop=US_SOP, **extra)
    img = D.read_dicom(p)
    np.testing.assert_allclose(img.pixels, idx.astype(np.float32) * 256 / 65535.0, atol=1e-4)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_compressed_copies_in_the_pydicom_wheel_read_like_the_original(name):
    """JPEG-LS, RLE and JPEG 2000 copies of one image (files shipped inside pydicom's wheel, no download)."""
    from pydicom.data import get_testdata_file

    ref = D.read_dicom(get_testdata_file("MR_small.dcm"))
    img = D.read_dicom(get_testdata_file(name))
    assert img.pixels.shape == ref.pixels.shape == (64, 64)
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.meta["transfer_syntax"] != ref.meta["transfer_syntax"]


def test_identifiers_are_found_after_a_file_name_sanitiser():
    """`prepare folder` rewrites punctuation in case_ids; an identifier must still be recognised there."""
    from breastai.data.readers.redaction import holds_identifier

    secrets = ["Doe^Janet", "AB_123", "Janet"]
    assert holds_identifier("benign_AB-123_scan", secrets)
    assert holds_identifier("malignant_doe-janet-2", ["Doe^Janet"])
    assert not holds_identifier("benign_case-7", secrets)
    assert not holds_identifier("benign_ab", ["a^b"])  # too short to mean anything once squashed


def _relabel(p: Path, rows: int, cols: int) -> Path:
    """Rewrite the header's Rows/Columns, leaving the pixel data as it is."""
    ds = pydicom.dcmread(p)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(p)
    return p


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
def test_header_undercounting_its_pixel_data_is_refused_not_read_as_a_strip(tmp_path, ts):
    """A 200x160 image whose header says 7x18: pydicom keeps the first 126 values, LoadSampled then said 'too small'."""
    p = _relabel(write_dicom(tmp_path / "strip.dcm", phantom(), ts=ts, modality="US", sop=US_SOP), 7, 18)
    with pytest.raises(ImageReadError, match=r"strip\.dcm: header says 7 rows x 18 columns.*"
                                             r"does not describe its pixel data") as e:
        load_image(p)
    if ts == ExplicitVRLittleEndian:
        assert "pixel data holds 64000 bytes, enough for 32000 pixels" in str(e.value)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_header_overcounting_its_pixel_data_names_the_header_size(tmp_path, ts):
    p = _relabel(write_dicom(tmp_path / "over.dcm", phantom(), ts=ts, modality="US", sop=US_SOP), 256, 256)
    with pytest.raises(ImageReadError, match=r"over\.dcm: .*header('s| says) 256 rows x 256 columns"):
        load_image(p)


def test_jpeg2000_frame_of_another_size_than_the_header_is_named(tmp_path):
    p = _relabel(write_dicom(tmp_path / "j2k.dcm", phantom(), ts=JPEG2000Lossless, modality="US", sop=US_SOP), 200, 100)
    with pytest.raises(ImageReadError, match=r"j2k\.dcm: header says 200 rows x 100 columns, but the JPEG 2000 "
                                             r"codestream of frame 0 is 200 rows x 160 columns"):
        load_image(p)


def test_pixel_data_padding_under_a_frame_is_still_read(tmp_path):
    odd = (np.arange(33 * 35) % 251).astype(np.uint8).reshape(33, 35)  # 1155 bytes, padded to 1156 on writing
    img = D.read_dicom(write_dicom(tmp_path / "odd.dcm", odd, modality="US", sop=US_SOP))
    assert img.pixels.shape == (33, 35)
    from pydicom.data import get_testdata_file

    # pydicom's own example of trailing padding: 128 bytes (one row) past the 64x64 image.
    assert D.read_dicom(get_testdata_file("MR_small_padded.dcm")).pixels.shape == (64, 64)

"""DICOM objects of one scored input, built with highdicom: a TID 1500 SR, a saliency SC and a lesion SEG;
and the SR of an image where the segmenter found no lesion.

Each builder takes the source image's header (``pydicom`` dataset, pixels not needed) and returns
a new instance in the source's study (patient and study modules copied by highdicom from the
source) and in the series it is given. Filing into the study is the point of these objects, so
they carry the patient's identifiers; the rest of predict's output never does.

Coded concepts chosen (all in the DICOM and SNOMED CT subsets pydicom ships):

* Probability: ``(111047, DCM, "Probability of cancer")``, the concept DICOM's mammography CAD
  templates use for a malignancy likelihood (CID 6048), unit ``(1, UCUM, "no units")`` since it is
  a probability in [0, 1] (not a percentage).
* TTA uncertainty: the same concept with derivation ``(386136009, SCT, "Standard Deviation")``
  (CID 3488), i.e. "SD of the probability of cancer", exactly what the ``uncertainty`` column is.
* Label at the operating threshold: qualitative evaluation ``(121073, DCM, "Impression")`` (the
  classification the algorithm arrives at; ``(121071, DCM, "Finding")`` is taken by TID 1501 for
  the finding type) with value ``(21594007, SCT, "Malignant")`` or ``(30807003, SCT, "Benign")``
  (CID 6063): the checkpoint's positive class is malignant; its negative class (benign or normal)
  is "not malignant".
* Lesion size: ``(42798000, SCT, "Area")`` in ``mm2`` and ``(81827009, SCT, "Diameter")`` in
  ``mm`` (the largest extent, maximum Feret diameter), measured on the lesion mask with the
  header's PixelSpacing, else ImagerPixelSpacing, else the calibration of the ultrasound region
  holding the lesion (Sequence of Ultrasound Regions, cm units); without any in pixels, units
  ``({pixels}, UCUM, "pixels")`` and ``({pixel}, UCUM, "pixel")`` so the unit says so. They sit in a
  planar ROI group that references the SEG's segment.
* Report: title ``(126000, DCM, "Imaging Measurement Report")`` (TID 1500 fixes it), procedure
  ``(71651007, SCT, "Mammography")`` for MG sources else ``(363679005, SCT, "Imaging procedure")``.
* SEG segment: category ``(49755003, SCT, "Morphologically Abnormal Structure")``, type
  ``(52988006, SCT, "Lesion")``.
* Algorithm identification (TID 4019, in the SR groups and the SEG segment of a provider's mask):
  name ``breastai <model>``, version the breastai version, parameters the checkpoint's SHA-256,
  operating threshold, saliency method and, with a segmenter, its model and presence threshold;
  algorithm family ``(123110, DCM, "Artificial Intelligence")``.
* No lesion found (:func:`build_no_lesion_sr`: the segmenter looked and found nothing, so there is
  no probability of cancer, no label and no SEG): one TID 1501 group whose qualitative evaluation
  is ``(111017, DCM, "CAD Processing and Findings Summary")`` = ``(111241, DCM, "All algorithms
  succeeded; without findings")`` (CID 6047). That pair is DICOM's own statement of "analysed,
  nothing found" (the Mammography CAD SR's summary, PS3.17 E.3.1 "with no findings"), distinct
  from ``(111245, DCM, "No algorithms succeeded; without findings")``, so a reader can tell
  "analysed, nothing found" from "not analysed". SCT "Normal" or "No abnormality" would claim a
  clinical finding the segmenter does not make: it says only that it found no lesion. The
  segmenter's lesion-presence probability is a measurement of the same group, unit ``1``: DICOM
  has no concept for a detector's presence probability (``Probability of cancer`` is another
  quantity; ``(111012, DCM, "Certainty of Finding")`` is the certainty of a finding reported, and
  none is), so it is the local concept :data:`LESION_PRESENCE` of the private coding scheme
  ``99BREASTAI`` (PS3.3 8.2: a designator beginning ``99`` is a private scheme), which the SR
  identifies in its Coding Scheme Identification Sequence. Where the classifier has whole-image
  members, the image's probability of cancer (the record's ``cancer_probability``: presence times
  their ``image_probability``) is a second group (tracking identifier "image"): ``(111047, DCM,
  "Probability of cancer")`` of the image as a whole, with no impression (no operating threshold
  was chosen for that score) and no finding.

The SR is a Comprehensive SR with VerificationFlag UNVERIFIED (nobody has signed it) and
PreliminaryFlag PRELIMINARY. The saliency map is a Secondary Capture (RGB, the map blended with
the grey image and the lesion outline, in the source's pixel grid), which every viewer shows;
large images are stored JPEG baseline compressed (lossy is acceptable for a display image and
keeps a 5000 x 5000 mammogram's capture at a few MB instead of 75 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from breastai.models.lesions import LesionSize

__all__ = ["AlgorithmInfo", "build_seg", "build_sc", "build_sr", "build_no_lesion_sr", "source_header",
           "pixel_spacing", "MANUFACTURER", "LESION_PRESENCE"]

MANUFACTURER = "breastai"
# Above this many pixels the capture is JPEG-compressed (a 1000 x 1000 RGB image is 3 MB raw).
_JPEG_ABOVE = 1_000_000

# breastai's private coding scheme (PS3.3 8.2.1: a designator beginning "99" is private) and its one
# concept: the segmenter's lesion-presence probability (see the module docstring for why no standard one).
_LOCAL_SCHEME = "99BREASTAI"
LESION_PRESENCE = ("LESIONPRESENCE", _LOCAL_SCHEME, "Lesion presence probability")


@dataclass
class AlgorithmInfo:
    """Who made the result: the model, the program and the checkpoint.

    Attributes:
        model: the model's registry name (an ensemble's member names joined by ``+``).
        version: the breastai version that ran the model.
        checkpoint_sha256: the SHA-256 of the checkpoint file's bytes.
        threshold: the operating threshold of the label.
        saliency: the saliency method of the map.
        segmenter: the segmenter's model name (empty: the run has none).
        presence_threshold: the segmenter's lesion-presence threshold (None: no segmenter).
    """

    model: str
    version: str
    checkpoint_sha256: str
    threshold: float
    saliency: str = ""
    segmenter: str = ""
    presence_threshold: float | None = None

    @property
    def name(self) -> str:
        return f"breastai {self.model}"

    def parameters(self) -> list[str]:
        out = [f"checkpoint_sha256={self.checkpoint_sha256}", f"operating_threshold={self.threshold:.6g}"]
        out += [f"saliency={self.saliency}"] if self.saliency else []
        if self.segmenter:
            out += [f"segmenter={self.segmenter}", f"lesion_presence_threshold={self.presence_threshold:.6g}"]
        return out

    def sr(self) -> Any:
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version, parameters=self.parameters(),
                                             family=codes.DCM.ArtificialIntelligence)

    def seg(self) -> Any:
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.AlgorithmIdentificationSequence(name=self.name, family=codes.DCM.ArtificialIntelligence,
                                                  version=self.version, parameters=None)


def pixel_spacing(ds: Any, mask: np.ndarray | None = None) -> tuple[float, float] | None:
    """(row, column) spacing in mm: PixelSpacing (calibrated), else ImagerPixelSpacing (detector), else
    with a lesion ``mask`` the calibration of the ultrasound region holding it
    (:func:`breastai.data.spacing.lesion_spacing`), else None."""
    from breastai.data.spacing import lesion_spacing

    spacing = lesion_spacing(ds, mask)
    return None if spacing is None else (spacing.row_mm, spacing.col_mm)


# Type 2 attributes of the Patient and General Study modules the new objects copy: present in
# every object, empty when unknown. Sources written by other tools sometimes omit them.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def source_header(path: Any) -> Any:
    """The source's header (no pixels), with absent Type 2 patient and study attributes set empty.

    Raises:
        ValueError: the file has no Study or SOP Instance UID, so nothing can be filed with it.
    """
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(ds.get(key, "") or "").strip():
            raise ValueError(f"the source has no {key}, so objects cannot be filed into its study")
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    if "Modality" not in ds:  # Type 1 in the source, but some exports omit it; the SR's image library needs it
        ds.Modality = "MG" if "Mammography" in getattr(ds.SOPClassUID, "name", "") else "OT"
    _drop_invalid_values(ds)
    return ds


_CHECKED_VRS = ("AS", "DA", "TM", "DT", "CS", "SH", "LO", "UI")


def _drop_invalid_values(ds: Any) -> None:
    """Empty (Type 2) or remove (others) top-level values invalid for their VR, e.g. ``PatientAge`` "732.0m".

    The new objects copy patient and study attributes from the source; an invalid value would make
    them invalid too (dciodvfy reports it as an error), and a wrong value is better left out.
    """
    from pydicom import config
    from pydicom.valuerep import validate_value

    for elem in list(ds):
        # Only the string VRs with a grammar; numbers and names are already parsed by pydicom.
        if elem.VR not in _CHECKED_VRS or elem.value in (None, ""):
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        try:
            for v in values:
                if isinstance(v, str):
                    validate_value(elem.VR, v, config.RAISE)
        except ValueError:
            if elem.keyword in _TYPE2:
                elem.value = ""
            elif elem.keyword not in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
                del ds[elem.tag]


_ORIGIN_WORDS = {"segmenter": "segmenter", "provider": "mask provider"}


def _frames(ds: Any, frame: int | None) -> list[int] | None:
    """The 1-based referenced frame of a multi-frame source (None for a single-frame one)."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return [int(frame or 0) + 1]
    return None


def build_seg(src: Any, mask: np.ndarray, series_uid: str, algorithm: AlgorithmInfo, mask_origin: str | None,
              frame: int | None = None) -> Any:
    """A binary DICOM SEG of the lesion outline ``mask`` (the source's pixel grid).

    ``mask_origin`` says who drew the outline: ``segmenter`` or ``provider:<name>`` (a segmentation
    model or a mask provider: algorithm type AUTOMATIC with its identification) or anything else
    (given by the user as a mask or a box: MANUAL).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    automatic = bool(mask_origin and (mask_origin == "segmenter" or mask_origin.startswith("provider")))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type="AUTOMATIC" if automatic else "MANUAL",
        algorithm_identification=algorithm.seg() if automatic else None,
        tracking_uid=hd.UID(), tracking_id="lesion")
    pixels = np.asarray(mask, dtype=bool)[None].astype(np.uint8)
    n_frames = int(src.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:  # one frame of a multi-frame source: its frame set, the others empty (omitted)
        full = np.zeros((n_frames, *pixels.shape[1:]), np.uint8)
        full[int(frame or 0)] = pixels[0]
        pixels = full
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=[description],
        series_instance_uid=series_uid, series_number=_SERIES_NUMBER["SEG"], sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version, device_serial_number=algorithm.checkpoint_sha256[:16],
        series_description="breastai lesion outline", content_label="LESION",
        content_description=f"lesion outline ({_ORIGIN_WORDS.get(str(mask_origin).split(':')[0], 'given')})")
    # General Image's PatientOrientation (Type 2C, required without an image plane): the
    # source's, as the SEG's frames are on the source's pixel grid; empty when it has none.
    seg.PatientOrientation = src.get("PatientOrientation") or ""
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if "FrameOfReferenceUID" not in src and measures and "SliceThickness" not in measures[0]:
        # A projection image's spacing without a slice thickness: highdicom cannot read its own
        # SEG back then (it needs both), and without a frame of reference the group is optional;
        # the SEG's pixels are the source's, whose spacing stays in the source.
        del shared.PixelMeasuresSequence
    return seg


def build_sc(src: Any, rgb: np.ndarray, series_uid: str, algorithm: AlgorithmInfo) -> Any:
    """A Secondary Capture of ``rgb`` (the saliency overlay, H x W x 3 uint8 on the source's grid)."""
    import highdicom as hd
    from pydicom.uid import JPEGBaseline8Bit

    orientation = tuple(str(v) for v in src.get("PatientOrientation") or ())
    big = rgb.shape[0] * rgb.shape[1] > _JPEG_ABOVE
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src, pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation="YBR_FULL_422" if big else "RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=_SERIES_NUMBER["SC"],
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        pixel_spacing=pixel_spacing(src) if src.get("PixelSpacing") is not None else None,
        laterality=src.get("ImageLaterality") or src.get("Laterality") or None,
        # highdicom wants an orientation; a source without one gets an empty (Type 2) value below.
        patient_orientation=orientation if len(orientation) == 2 else ("L", "F"),
        transfer_syntax_uid=JPEGBaseline8Bit if big else "1.2.840.10008.1.2.1",
        series_description=f"breastai saliency ({algorithm.saliency or 'map'})",
    )
    if len(orientation) != 2:
        sc.PatientOrientation = ""
    if "Laterality" not in sc:  # General Series Type 2C for a paired organ: present, empty = unknown
        sc.Laterality = ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"{algorithm.name} saliency map blended with the image; lesion outline in green"
    sc.BurnedInAnnotation = "NO"
    sc.SourceImageSequence = [_image_ref(src)]
    return sc


def _image_ref(src: Any) -> Any:
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    return ref


def build_sr(src: Any, record: dict[str, Any], series_uid: str, algorithm: AlgorithmInfo, device_uid: str,
             seg: Any | None, size: LesionSize | None, classes: list[str], frame: int | None = None) -> Any:
    """A Comprehensive SR (TID 1500) of one record's probability, label, uncertainty and lesion size."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = algorithm.sr()
    frames = _frames(src, frame)
    measurements = [hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=float(record["probability"]),
                                      unit=codes.UCUM.NoUnits, algorithm_id=algo)]
    if record.get("uncertainty") is not None:
        measurements.append(hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=float(record["uncertainty"]),
                                              unit=codes.UCUM.NoUnits, derivation=codes.SCT.StandardDeviation,
                                              algorithm_id=algo))
    malignant = record["label"] == classes[1]
    label = hd.sr.QualitativeEvaluation(name=codes.DCM.Impression,
                                        value=codes.SCT.Malignant if malignant else codes.SCT.Benign)
    groups: list[Any] = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="malignancy"),
        algorithm_id=algo, measurements=measurements, qualitative_evaluations=[label],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src, referenced_frame_numbers=frames)])]
    if seg is not None and size is not None:
        if size.unit == "mm":
            area_unit, length_unit = codes.UCUM.SquareMillimeter, codes.UCUM.Millimeter
        else:
            area_unit = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
            length_unit = hd.sr.CodedConcept("{pixel}", "UCUM", "pixel")
        ref = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=1, segment_number=1,
            source_image=hd.sr.SourceImageForSegmentation(src.SOPClassUID, src.SOPInstanceUID,
                                                          referenced_frame_numbers=frames))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion"),
            referenced_segment=ref, finding_type=codes.SCT.Lesion,
            measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=size.area, unit=area_unit),
                          hd.sr.Measurement(name=codes.SCT.Diameter, value=size.diameter, unit=length_unit)]))
    sr = _report(src, groups, series_uid, algorithm, device_uid, seg, "breastai malignancy result (unverified)")
    if seg is not None:
        _segment_reference_without_frame(sr, seg.SOPInstanceUID)
    return sr


def build_no_lesion_sr(src: Any, presence: float | None, series_uid: str, algorithm: AlgorithmInfo,
                       device_uid: str, frame: int | None = None, image_probability: float | None = None) -> Any:
    """A Comprehensive SR (TID 1500) of an image where the segmenter found no lesion: the algorithm,
    the finding "all algorithms succeeded; without findings" and the lesion-presence probability
    ``presence`` (codes and reasons in the module docstring); no lesion's probability of cancer, no
    SEG. ``image_probability`` (the record's ``cancer_probability``) is the image's probability of
    cancer, in a group of its own."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = algorithm.sr()
    frames = _frames(src, frame)
    summary = hd.sr.QualitativeEvaluation(name=codes.DCM.CADProcessingAndFindingsSummary,
                                          value=codes.DCM.AllAlgorithmsSucceededWithoutFindings)
    measurements = [] if presence is None else [hd.sr.Measurement(
        name=hd.sr.CodedConcept(*LESION_PRESENCE), value=float(presence), unit=codes.UCUM.NoUnits, algorithm_id=algo)]
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion search"),
        algorithm_id=algo, measurements=measurements or None, qualitative_evaluations=[summary],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src, referenced_frame_numbers=frames)])]
    if image_probability is not None:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image"), algorithm_id=algo,
            measurements=[hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=float(image_probability),
                                            unit=codes.UCUM.NoUnits, algorithm_id=algo)],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
                src, referenced_frame_numbers=frames)]))
    sr = _report(src, groups, series_uid, algorithm, device_uid, None, "breastai: no lesion found (unverified)")
    if measurements:
        from pydicom.dataset import Dataset

        scheme = Dataset()  # SOP Common: identifies the private scheme of LESION_PRESENCE
        scheme.CodingSchemeDesignator, scheme.CodingSchemeName = _LOCAL_SCHEME, "breastai local concepts"
        scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
        sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _report(src: Any, groups: list[Any], series_uid: str, algorithm: AlgorithmInfo, device_uid: str, seg: Any | None,
            description: str) -> Any:
    """The Comprehensive SR of a TID 1500 report of ``groups`` on ``src``, observed by this checkpoint's device."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name="breastai", manufacturer_name=MANUFACTURER, model_name=algorithm.name))
    mg = str(src.get("Modality", "")) == "MG" or "Mammography" in getattr(src.SOPClassUID, "name", "")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.Mammography if mg else codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        # The image library entry of a projection image needs its orientation and imager pixel
        # spacing; without them the image is still referenced from each measurement group.
        referenced_images=[src] if _describable(src) else None)
    evidence = [src] + ([seg] if seg is not None else [])
    return hd.sr.ComprehensiveSR(
        evidence=evidence, content=report, series_instance_uid=series_uid, series_number=_SERIES_NUMBER["SR"],
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, is_verified=False, series_description=description)


def _describable(src: Any) -> bool:
    """Whether highdicom can describe ``src`` in the SR's image library (TID 1601)."""
    import highdicom as hd

    try:
        hd.sr.ImageLibraryEntryDescriptors(src)
    except (AttributeError, IndexError, TypeError, ValueError):
        return False
    return True


def _segment_reference_without_frame(sr: Any, seg_uid: str) -> None:
    """Drop the frame number from the SR's references to the SEG, keeping the segment number.

    highdicom writes both, which the standard forbids (Referenced Segment Number "shall not be
    present if Referenced Frame Number is present"; dciodvfy reports it as an error). The SEG has
    one segment on one frame, so the segment alone names the same pixels.
    """
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        for ref in item.get("ReferencedSOPSequence", []):
            if ref.get("ReferencedSOPInstanceUID") == seg_uid and "ReferencedSegmentNumber" in ref:
                ref.pop("ReferencedFrameNumber", None)
        stack.extend(item.get("ContentSequence", []))


# New series get numbers far above an acquisition's so they sort after the source images.
_SERIES_NUMBER = {"SR": 9901, "SC": 9902, "SEG": 9903}

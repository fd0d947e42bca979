"""``breastai serve``: the DICOM node in-process, against a small pynetdicom store SCP as its destination.

The real PACS round trip (Orthanc) and the ``kill -9`` restart are in ``test_serve_orthanc.py``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_dicom import PHI, US_SOP, phantom, write_dicom

from breastai.inference.serve import (STATUS_MODALITY, Destination, DicomNode, ServeOptions, store_files)

pytest.importorskip("pynetdicom")

SR_SOP, SC_SOP = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


class FakePacs:
    """A store SCP on a loopback port that keeps (SOP Class, SOP Instance, Study) of what it receives."""

    def __init__(self, port: int = 0):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.received: list[tuple[str, str, str]] = []
        ae = AE(ae_title="FAKEPACS")
        for uid in (SR_SOP, SC_SOP, "1.2.840.10008.5.1.4.1.1.66.4"):
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)

        def on_store(event):
            ds = event.dataset
            self.received.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.port = int(self.server.server_address[1])
        self.dest = Destination("FAKEPACS", "127.0.0.1", self.port)

    def of(self, sop_class: str) -> list[tuple[str, str, str]]:
        return [r for r in self.received if r[0] == sop_class]

    def close(self) -> None:
        self.server.shutdown()


def wait_for(cond, timeout: float = 30.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


def options(**kw) -> ServeOptions:
    base = dict(host="127.0.0.1", port=0, quiet_seconds=0.5, device="cpu", poll_seconds=0.1, retry_delay=0.1,
                retry_max_delay=0.4, send_attempts=2)
    return ServeOptions(**{**base, **kw})


def mg_file(path: Path, study: str, **kw) -> Path:
    return write_dicom(path, phantom(), bits_stored=12, StudyInstanceUID=study, PixelSpacing=[0.1, 0.1], **kw)


def node_ae(node: DicomNode) -> Destination:
    return Destination(node.options.ae_title, "127.0.0.1", node.port)


def echo(node: DicomNode) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.options.ae_title)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


@pytest.fixture
def pacs():
    p = FakePacs()
    yield p
    p.close()


def test_destination_parse():
    d = Destination.parse("PACS@10.0.0.5:104")
    assert (d.ae_title, d.host, d.port) == ("PACS", "10.0.0.5", 104) and str(d) == "PACS@10.0.0.5:104"
    assert Destination.parse("X@[::1]:11112").host == "::1"
    for bad in ("PACS:104", "PACS@host", "@h:1", "PACS@h:0", "A" * 17 + "@h:1", "P@h:x"):
        with pytest.raises(ValueError, match="--forward"):
            Destination.parse(bad)


def test_echo_and_refusals(mg_ckpt, tmp_path, caplog):
    """C-ECHO works; a CT or US class is refused in negotiation (this checkpoint knows MG only); an MG class
    carrying another modality gets 0xA900 and is not queued; no log line names the patient or a UID."""
    from pynetdicom import AE

    ct = write_dicom(tmp_path / "ct.dcm", phantom(), modality="CT", sop="1.2.840.10008.5.1.4.1.1.2")
    us = write_dicom(tmp_path / "us.dcm", phantom().astype(np.uint8), modality="US", sop=US_SOP)
    wrong = mg_file(tmp_path / "wrong.dcm", generate_uid(), modality="CT")
    with caplog.at_level(logging.INFO), DicomNode(mg_ckpt, tmp_path / "q", options()) as node:
        assert echo(node) == 0x0000
        ae = AE(ae_title="TESTSCU")
        for uid in ("1.2.840.10008.5.1.4.1.1.2", US_SOP, "1.2.840.10008.5.1.4.1.1.1.2"):
            ae.add_requested_context(uid)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="BREASTAI")
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        assoc.release()
        assert accepted == {"1.2.840.10008.5.1.4.1.1.1.2"}
        for f in (ct, us):  # offered alone, the association has no usable context and is not made
            with pytest.raises(ConnectionError):
                list(store_files(node_ae(node), "TESTSCU", [f]))
        assert list(store_files(node_ae(node), "TESTSCU", [wrong])) == [(wrong, STATUS_MODALITY)]
        # An association calling another AE title is rejected.
        with pytest.raises(ConnectionError):
            list(store_files(Destination("OTHER", "127.0.0.1", node.port), "TESTSCU", [wrong]))
    assert not list((tmp_path / "q" / "studies").iterdir())
    assert "modality CT in a MG storage SOP class (status 0xA900)" in caplog.text
    src = pydicom.dcmread(wrong)
    for secret in [*PHI.values(), src.StudyInstanceUID, src.SOPInstanceUID]:
        assert secret not in caplog.text


def test_garbage_and_undecodable_file_keep_the_node_up(mg_ckpt, tmp_path, pacs, caplog):
    """Random bytes on the port and a file whose pixels cannot be decoded: the node logs why, scores the
    study's good image, sends its objects only, and still answers."""
    study = generate_uid()
    good = mg_file(tmp_path / "good.dcm", study)
    bad = mg_file(tmp_path / "bad.dcm", study)
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData[:1000]  # far shorter than Rows x Columns x 2 bytes
    ds.save_as(bad, enforce_file_format=True)
    with caplog.at_level(logging.INFO), DicomNode(mg_ckpt, tmp_path / "q", options(forward=pacs.dest)) as node:
        for junk in (b"\x00" * 3, bytes(range(256)) * 40, b"\x01\x00\x00\x00\x00\x10" + b"x" * 16):
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
                s.sendall(junk)
        assert echo(node) == 0x0000
        sent = list(store_files(node_ae(node), "TESTSCU", [good, bad]))
        assert [s for _, s in sent] == [0, 0]  # both queued: the header is fine, the pixels are not
        assert wait_for(lambda: len(pacs.of(SR_SOP)) == 1 and "gets no result" in caplog.text)
        time.sleep(0.5)
        assert echo(node) == 0x0000
    assert len(pacs.of(SR_SOP)) == 1 and len(pacs.of(SC_SOP)) == 1
    bad_hash = json.loads(next((tmp_path / "q" / "studies").glob("*/rounds/0001/round.json")).read_text())
    errors = [k for k, v in bad_hash["results"].items() if isinstance(v, dict)]
    assert len(errors) == 1 and errors[0] in caplog.text
    assert "worker step failed" not in caplog.text
    assert "Unknown PDU type received" in caplog.text  # pynetdicom's reason for dropping the garbage


def test_queue_rounds_and_restart_send_each_object_once(mg_ckpt, tmp_path, pacs):
    """A quiet study is scored once and forwarded once; a restart sends nothing again but what lacks its
    sent marker; a late image is scored in a round of its own; the same image again is not re-scored."""
    study = generate_uid()
    files = [mg_file(tmp_path / f"{k}.dcm", study) for k in range(3)]
    q = tmp_path / "q"
    with DicomNode(mg_ckpt, q, options(forward=pacs.dest, quiet_seconds=1.0)) as node:
        list(store_files(node_ae(node), "TESTSCU", files[:2]))
        assert wait_for(lambda: len(pacs.received) == 4)
    (folder,) = (q / "studies").iterdir()
    rnd = folder / "rounds" / "0001"
    state = json.loads((rnd / "round.json").read_text())
    assert len(state["images"]) == 2 and len(state["objects"]) == 4
    assert sorted(p.name for p in (rnd / "sent").iterdir()) == sorted(Path(o).name for o in state["objects"])
    assert {r[2] for r in pacs.received} == {study}  # filed into the source study
    # An unsent object (its marker gone, as after a crash between store and marker) goes again, alone.
    sr_name = next(Path(o).name for o in state["objects"] if o.endswith("_sr.dcm"))
    (rnd / "sent" / sr_name).unlink()
    with DicomNode(mg_ckpt, q, options(forward=pacs.dest, quiet_seconds=1.0)) as node:
        assert wait_for(lambda: len(pacs.received) == 5)
        assert pacs.received[-1][1] == pydicom.dcmread(rnd / next(o for o in state["objects"] if o.endswith(sr_name))).SOPInstanceUID
        list(store_files(node_ae(node), "TESTSCU", [files[2], files[0]]))  # a late image and a repeat
        assert wait_for(lambda: (folder / "rounds" / "0002" / "round.json").is_file() and len(pacs.received) == 7)
        time.sleep(1.5)
    second = json.loads((folder / "rounds" / "0002" / "round.json").read_text())
    assert second["images"] == [_hash(files[2])]
    assert len(pacs.received) == 7 and not (folder / "rounds" / "0003").exists()
    assert len({r[1] for r in pacs.received}) == 6  # every object is a new instance; the resend was the same one


def _hash(path: Path) -> str:
    from breastai.data.readers.dicom_header import uid_hash

    return uid_hash(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_forward_retries_until_the_destination_comes_up(mg_ckpt, tmp_path, caplog):
    """The destination is down at first: attempts fail with backoff, the objects stay queued, and are sent
    once it listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = Destination("FAKEPACS", "127.0.0.1", port)
    f = mg_file(tmp_path / "a.dcm", generate_uid())
    with caplog.at_level(logging.INFO), DicomNode(mg_ckpt, tmp_path / "q", options(forward=dest)) as node:
        list(store_files(node_ae(node), "TESTSCU", [f]))
        assert wait_for(lambda: "still unsent after 2 attempt(s)" in caplog.text)
        assert "(attempt 1 of 2)" in caplog.text and "(attempt 2 of 2)" in caplog.text
        late = FakePacs(port)
        try:
            assert wait_for(lambda: len(late.received) == 2)
        finally:
            late.close()


def test_cli_refuses_a_classifier_as_segmenter_and_bad_forward(mg_ckpt, tmp_path, capsys):
    from breastai.cli import main

    base = ["serve", "--checkpoint", str(mg_ckpt), "--out", str(tmp_path / "q"), "--port", "0"]
    assert main([*base, "--segmenter", str(mg_ckpt)]) == 2
    assert "a classifier checkpoint (model small_cnn) outlines nothing: give it as --checkpoint" in capsys.readouterr().err
    assert main([*base, "--forward", "PACS:104"]) == 2
    assert "expected AE@HOST:PORT" in capsys.readouterr().err


def test_one_node_per_queue_folder(mg_ckpt, tmp_path):
    from breastai.inference.writers import OutputBusyError

    with DicomNode(mg_ckpt, tmp_path / "q", options()):
        with pytest.raises(OutputBusyError, match="another breastai node"):
            DicomNode(mg_ckpt, tmp_path / "q", options()).start()


def test_round_results_name_a_no_lesion_image_and_send_its_sr():
    """round.json says "no lesion found" for an image the segmenter found nothing in (not null), with the
    whole-image probability where there is one, and that image's SR is sent; a scored lesion keeps its
    probability, a failed image its reason."""
    from breastai.inference.segment import NO_LESION
    from breastai.inference.serve import round_results

    records = [
        {"id": "a", "error": None, "label": "malignant", "probability": 0.8, "dicom_sr": "r/a_sr.dcm", "dicom_seg": "r/a_seg.dcm"},
        {"id": "b", "error": None, "label": NO_LESION, "probability": None, "dicom_sr": "r/b_sr.dcm"},
        {"id": "c", "error": "c: truncated", "label": None, "probability": None},
        {"id": "d", "error": None, "label": NO_LESION, "probability": None, "image_probability": 0.3,
         "cancer_probability": 0.06},
    ]
    results, objects = round_results(records)
    assert results == {"a": 0.8, "b": NO_LESION, "c": {"error": "c: truncated"},
                       "d": {"label": NO_LESION, "image_probability": 0.3, "cancer_probability": 0.06}}  # still scored
    assert objects == [str(Path("dicom") / p) for p in ("r/a_sr.dcm", "r/a_seg.dcm", "r/b_sr.dcm")]

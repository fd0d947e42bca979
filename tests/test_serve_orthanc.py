"""``breastai serve`` against a real PACS: Orthanc (Debian's package), started by the test on loopback ports.

The 8 real mammograms of ``shared/data/dicom-mg`` go through the node into Orthanc; a node killed with
``kill -9`` mid-study and restarted files each result exactly once. Skips when the ``Orthanc`` binary
(``apt-get install -y orthanc``; ``.ci/run`` installs it) or the real data is absent.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import real_data
from orthanc import free_port, orthanc
from pydicom.uid import generate_uid
from test_serve import SC_SOP, SR_SOP, mg_file, options, wait_for

from breastai.inference.serve import Destination, DicomNode, store_files
from breastai.inference.writers import run_predict

SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pacs(tmp_path):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc: apt-get install -y orthanc)")
    (tmp_path / "orthanc").mkdir()
    with orthanc(tmp_path / "orthanc") as server:
        yield server


def centre_box(item, image, meta):
    """A stand-in for a segmentation model (breastai has none yet): the middle quarter of the image, so the
    node has a lesion outline to file as a SEG."""
    h, w = np.shape(image)[:2]
    mask = np.zeros((h, w), dtype=bool)
    mask[3 * h // 8:5 * h // 8, 3 * w // 8:5 * w // 8] = True
    return mask


def sr_report(pacs, inst) -> tuple[float, set[str]]:
    """The probability an SR stored in Orthanc holds, and the SOP Instance UIDs it lists as evidence."""
    import highdicom as hd

    data = pacs.get(f"/instances/{inst['id']}/file")
    ds = pydicom.dcmread(io.BytesIO(data))
    group = hd.sr.srread(io.BytesIO(data)).content.get_image_measurement_groups()[0]
    prob = [m.value for m in group.get_measurements() if m.derivation is None][0]
    refs = {str(s.ReferencedSOPInstanceUID) for e in ds.CurrentRequestedProcedureEvidenceSequence
            for r in e.ReferencedSeriesSequence for s in r.ReferencedSOPSequence}
    return float(prob), refs


def test_round_trip_of_the_real_mammograms(mg_ckpt, tmp_path, pacs):
    """Each source study ends up holding one SR, one SC and one SEG per image, and each SR's probability is
    the one ``predict`` gives the same file."""
    files = sorted(p for p in real_data("dicom-mg").iterdir() if p.is_file())
    assert len(files) == 8
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    opts = options(forward=Destination(pacs.ae_title, "127.0.0.1", pacs.dicom_port), quiet_seconds=1.0)
    with DicomNode(mg_ckpt, tmp_path / "q", opts, mask_providers=[centre_box]) as node:
        sent = list(store_files(Destination("BREASTAI", "127.0.0.1", node.port), "TESTSCU", files))
        assert [s for _, s in sent] == [0] * 8
        reference, _ = run_predict(node.predictor, files, tmp_path / "ref", saliency="none",
                                   mask_providers=[centre_box])
        assert wait_for(lambda: len(pacs.instances()) == 24, timeout=240), pacs.instances()
    found = pacs.instances()
    for h in {h.StudyInstanceUID for h in headers}:
        n = sum(x.StudyInstanceUID == h for x in headers)
        kinds = Counter(i["sop_class"] for i in found if i["study"] == h)
        assert kinds == {SR_SOP: n, SC_SOP: n, SEG_SOP: n}
    by_sop = {}
    for inst in found:
        if inst["sop_class"] == SR_SOP:
            prob, refs = sr_report(pacs, inst)
            (src,) = refs & {h.SOPInstanceUID for h in headers}
            by_sop[src] = prob
    for h, rec in zip(headers, reference):
        assert rec["error"] is None
        assert abs(by_sop[h.SOPInstanceUID] - rec["probability"]) < 1e-6


def _start_node(ckpt: Path, out: Path, port: int, forward: str, quiet: float, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-c", "import sys; from breastai.cli import main; sys.exit(main())", "serve",
            "--checkpoint", str(ckpt), "--out", str(out), "--host", "127.0.0.1", "--port", str(port),
            "--forward", forward, "--quiet-seconds", str(quiet), "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    fh = open(log, "a")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    fh.close()
    if not wait_for(lambda: "listening on" in log.read_text() or proc.poll() is not None, timeout=180):
        proc.kill()
        pytest.fail(f"the node did not start: {log.read_text()[-2000:]}")
    assert proc.poll() is None, log.read_text()[-2000:]
    return proc


def test_kill_9_mid_study_then_restart(mg_ckpt, tmp_path, pacs):
    """Images acknowledged, node killed before the study went quiet: after a restart the study is scored and
    filed once (one SR and one SC per image), and SIGTERM stops the node cleanly."""
    study = generate_uid()
    files = [mg_file(tmp_path / f"{k}.dcm", study) for k in range(2)]
    port, log = free_port(), tmp_path / "node.log"
    node = _start_node(mg_ckpt, tmp_path / "q", port, pacs.forward, quiet=30, log=log)
    try:
        sent = list(store_files(Destination("BREASTAI", "127.0.0.1", port), "TESTSCU", files))
        assert [s for _, s in sent] == [0, 0]
    finally:
        os.kill(node.pid, signal.SIGKILL)
        node.wait(timeout=30)
    (folder,) = (tmp_path / "q" / "studies").iterdir()
    assert len(list((folder / "images").glob("*.dcm"))) == 2 and not (folder / "rounds").exists()
    assert pacs.instances() == []
    node = _start_node(mg_ckpt, tmp_path / "q", port, pacs.forward, quiet=1, log=log)
    try:
        assert wait_for(lambda: len(pacs.instances()) >= 4, timeout=120), log.read_text()[-2000:]
        time.sleep(2)  # nothing more comes
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
    found = pacs.instances()
    assert Counter(i["sop_class"] for i in found) == {SR_SOP: 2, SC_SOP: 2}
    refs = [sr_report(pacs, i)[1] for i in found if i["sop_class"] == SR_SOP]
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert sorted(len(r & sources) for r in refs) == [1, 1] and set.union(*refs) >= sources
    text = log.read_text()
    assert "resuming: 2 image(s) to score" in text and "breastai serve: stopped" in text
    assert study not in text and "Doe^Jane" not in text

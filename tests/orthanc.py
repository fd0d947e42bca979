"""A throw-away Orthanc for the serve tests (and the serve benchmark): own process, loopback, no auth.

Debian's package (``apt-get install -y orthanc``) also installs a system service; this starts a
separate ``Orthanc CONFIG.json`` with its storage in a temporary folder and free ports, and kills
it at the end. Queried through its REST API with urllib.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["free_port", "Orthanc", "orthanc"]

ORTHANC_AE = "ORTHANC"


def free_port() -> int:
    """A TCP port free on the loopback now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """A running Orthanc: its DICOM port, and its REST API."""

    def __init__(self, dicom_port: int, http_port: int, proc: subprocess.Popen):
        self.dicom_port, self.http_port, self.proc = dicom_port, http_port, proc
        self.ae_title = ORTHANC_AE

    @property
    def forward(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            data = r.read()
        return data if path.endswith("/file") else (data.decode() if "/metadata/" in path else json.loads(data))

    def study_instances(self, study_uid: str) -> int:
        """How many instances Orthanc holds in the study (0 when it has none of it)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/tools/lookup", data=study_uid.encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            found = [x for x in json.loads(r.read()) if x.get("Type") == "Study"]
        return sum(len(self.get(f"/studies/{x['ID']}/instances")) for x in found)

    def instances(self) -> list[dict[str, Any]]:
        """Every instance with its SOP Class and Instance UIDs, series modality and Study Instance UID."""
        out = []
        for series in self.get("/series?expand"):
            study = self.get(f"/studies/{series['ParentStudy']}")
            for inst in series["Instances"]:
                tags = self.get(f"/instances/{inst}")["MainDicomTags"]
                out.append({"id": inst, "sop": tags.get("SOPInstanceUID"), "study": study["MainDicomTags"]["StudyInstanceUID"],
                            "modality": series["MainDicomTags"].get("Modality"),
                            "sop_class": self.get(f"/instances/{inst}/metadata/SopClassUid")})
        return out


@contextmanager
def orthanc(tmp: Path, node_ae: str = "BREASTAI", node_port: int = 11112) -> Iterator[Orthanc]:
    """Start Orthanc with a throw-away configuration in ``tmp``; kill it afterwards.

    Raises:
        RuntimeError: the binary is missing or the server did not come up.
    """
    binary = shutil.which("Orthanc")
    if binary is None:
        raise RuntimeError("the Orthanc binary is not installed (Debian: apt-get install -y orthanc)")
    dicom_port, http_port = free_port(), free_port()
    cfg = {
        "Name": "breastai-test", "StorageDirectory": str(tmp / "storage"), "IndexDirectory": str(tmp / "index"),
        "DicomAet": ORTHANC_AE, "DicomPort": dicom_port, "HttpPort": http_port, "DicomServerEnabled": True,
        "HttpServerEnabled": True, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        "DicomModalities": {"breastai": [node_ae, "127.0.0.1", node_port]}, "HttpTimeout": 30,
    }
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(cfg))
    log = open(tmp / "orthanc.log", "w")
    proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(dicom_port, http_port, proc)
    try:
        deadline = time.time() + 30
        while True:
            try:
                server.get("/system")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"Orthanc did not start; see {tmp / 'orthanc.log'}") from None
                time.sleep(0.2)
        yield server
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()

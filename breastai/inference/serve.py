"""``breastai serve``: a DICOM node that scores breast images and files the results back.

A C-STORE SCP (pynetdicom) accepts mammograms and ultrasound images, writes each into the
persistent queue (:mod:`breastai.inference.serve_queue`) before it acknowledges it, and answers
C-ECHO. A worker scores a study once no image of it has arrived for ``quiet_seconds``, through
the predict pipeline (:func:`~breastai.inference.writers.run_predict` with the
:class:`~breastai.inference.dicom_writer.DicomObjects` writer), and C-STOREs every SR, SC and SEG
to the forward destination, retrying with bounded exponential backoff. The queue records every
step atomically, so a restart (even after ``kill -9``) scores what was received but not scored,
sends what was made but not sent, and sends nothing that the destination already accepted.

What is accepted (``SOP_CLASSES``): Digital Mammography For Presentation and For Processing, US
Image and US Multi-frame Image storage, limited to the modalities the checkpoint was trained on
when it records them. Any other SOP class is refused while the association is negotiated (the
presentation context is rejected: abstract syntax not supported). Secondary Capture is not
accepted, though some workstations export ultrasound that way: its Modality is free text, so it
would let screenshots and reports in, and a destination that routes our own SC overlays back to
us would loop. A dataset of an accepted class that names another modality (an MG class saying
``CT``) is refused with status ``0xA900`` (PS3.4 B.2.3, "Data Set does not match SOP Class");
one that cannot be decoded, or lacks its Study or SOP Instance UID, with ``0xC000`` ("Cannot
understand"). Logs name studies and images by the hash of their UIDs only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from breastai.data.readers.dicom_header import modality_and_intent, uid_hash
from breastai.inference.dicom_writer import DICOM_FIELDS, DicomObjects
from breastai.inference.predictor import MaskProvider, Predictor
from breastai.inference.segment import NO_LESION
from breastai.models.outliner import SegmenterSource
from breastai.inference.serve_queue import Round, Study, StudyQueue
from breastai.inference.writers import OutputBusyError, PredictionTables, output_lock, run_predict

__all__ = ["round_results", "check_ae_title", "Destination", "ServeOptions", "DicomNode", "SOP_CLASSES", "STATUS_MODALITY",
           "STATUS_UNREADABLE", "store_files"]

log = logging.getLogger("breastai")

SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",  # Digital Mammography X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",  # - For Processing
    "1.2.840.10008.5.1.4.1.1.6.1": "US",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1": "US",  # Ultrasound Multi-frame Image Storage
}
STATUS_MODALITY = 0xA900  # Error: Data Set does not match SOP Class
STATUS_UNREADABLE = 0xC000  # Error: Cannot understand
_SENT_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the C-STORE warnings (stored as sent)


def check_ae_title(text: str) -> str:
    """``text`` if it is a valid AE title (1 to 16 ASCII characters, no backslash).

    Raises:
        ValueError: it is not.
    """
    if not text or len(text) > 16 or not text.isascii() or "\\" in text:
        raise ValueError(f"{text!r}: an AE title is 1 to 16 ASCII characters, without a backslash")
    return text


@dataclass(frozen=True)
class Destination:
    """Where results are C-STOREd: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """Read ``AE@HOST:PORT``.

        Raises:
            ValueError: the text is not of that form, or the AE title or port is out of range.
        """
        ae, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and ae and host and port.isdigit()):
            raise ValueError(f"--forward {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
        try:
            check_ae_title(ae)
        except ValueError as exc:
            raise ValueError(f"--forward {text!r}: {exc}") from None
        if not 0 < int(port) < 65536:
            raise ValueError(f"--forward {text!r}: port {port} is not in 1..65535")
        return cls(ae, host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ServeOptions:
    """How the node listens, waits, scores and forwards.

    Attributes:
        ae_title: the node's AE title (associations must call it).
        host, port: where it listens (port 0: any free port, see :attr:`DicomNode.port`).
        forward: the destination of the results (None: they stay in the queue).
        quiet_seconds: a study is scored once no image of it has arrived for this long.
        send_attempts: C-STORE attempts per pass before the round waits ``retry_max_delay``.
        retry_delay: the first wait between attempts; it doubles up to ``retry_max_delay``.
        saliency: the saliency method of the SC overlay (``none``: no SC).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    ae_title: str = "BREASTAI"
    host: str = "0.0.0.0"
    port: int = 11112
    forward: Destination | None = None
    quiet_seconds: float = 30.0
    send_attempts: int = 5
    retry_delay: float = 1.0
    retry_max_delay: float = 60.0
    saliency: str = "gradcam++"
    device: str = "auto"
    poll_seconds: float = 0.25


def store_files(dest: Destination, calling_ae: str, paths: Sequence[Path]) -> Iterator[tuple[Path, int | None]]:
    """C-STORE ``paths`` to ``dest`` over one association; yields each path with its status.

    The status is None when the destination sent none (the association broke). Each file is
    offered in its own transfer syntax.

    Raises:
        ConnectionError: no association could be made.
    """
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    offered: set[tuple[str, str]] = set()
    for p in paths:
        meta = pydicom.dcmread(p, stop_before_pixels=True).file_meta
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in offered:
            offered.add(pair)
            ae.add_requested_context(*pair)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {dest}")
    try:
        for p in paths:
            status = assoc.send_c_store(p)
            yield p, int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def round_results(records: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """A scoring round's ``round.json`` results and the DICOM objects to send, from predict's records.

    Per record id: the calibrated probability; ``"no lesion found"`` where the segmenter found none
    (its SR, which says so, is sent like any object), or ``{"label": "no lesion found",
    "image_probability": p, "cancer_probability": q x p}`` where whole-image members still scored
    the image; ``{"error": why}`` where the image got no result.
    """
    results: dict[str, Any] = {}
    objects: list[str] = []
    for rec in records:
        if rec["error"]:
            results[rec["id"]] = {"error": rec["error"]}
            continue
        if rec.get("label") != NO_LESION:
            results[rec["id"]] = rec["probability"]
        elif rec.get("image_probability") is None:
            results[rec["id"]] = NO_LESION
        else:
            results[rec["id"]] = {"label": NO_LESION, "image_probability": rec["image_probability"],
                                  "cancer_probability": rec.get("cancer_probability")}
        objects += [str(Path("dicom") / rec[k]) for k in DICOM_FIELDS if rec.get(k)]
    return results, objects


class DicomNode:
    """The serve node: a storage SCP, the on-disk queue and the worker that scores and forwards.

    Args:
        checkpoint: the ``best.pt`` to score with.
        out: the queue folder (one node per folder; a second is refused).
        options: see :class:`ServeOptions`.
        mask_providers: outline inputs for the SEG and lesion size (none by default: no SEG).
        segmenter: a segmentation checkpoint (path or loaded): each image's lesions are outlined and
            scored one by one, each with its SR, SEG and lesion size (see
            :mod:`breastai.inference.segment`); an image without a lesion gets no objects.
    """

    def __init__(self, checkpoint: str | Path, out: str | Path, options: ServeOptions = ServeOptions(),
                 mask_providers: Sequence[MaskProvider] = (), segmenter: SegmenterSource | None = None):
        check_ae_title(options.ae_title)
        self.checkpoint = Path(checkpoint)
        self.out = Path(out)
        self.options = options
        self.predictor = Predictor.from_checkpoint(checkpoint, device=options.device, mask_providers=mask_providers,
                                                   segmenter=segmenter)
        trained = set().union(*[m.modalities or SOP_CLASSES.values() for m in self.predictor.members])
        self.sop_classes = {uid: mod for uid, mod in SOP_CLASSES.items() if mod in trained}
        if not self.sop_classes:
            raise ValueError(f"{checkpoint}: the checkpoint was trained on {', '.join(sorted(trained))}; serve accepts "
                             "MG and US images only, so it would refuse every image")
        self.queue: StudyQueue | None = None
        self.port: int | None = None
        self._stop = threading.Event()
        self._idle: set[str] = set()  # studies with nothing to score or send; an arriving image removes its study
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._exit = contextlib.ExitStack()
        self._server: Any = None
        self._worker: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> None:
        """Lock the queue folder, resume its state, listen, and start the worker.

        Raises:
            OutputBusyError: another node (or predict run) holds ``out``.
        """
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import Verification

        # pynetdicom logs UIDs at INFO (highdicom too: DicomObjects quiets it); ours name studies by hash only.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self._exit.enter_context(output_lock(self.out))
        except OutputBusyError:
            raise OutputBusyError(f"{self.out}: another breastai node or predict run is using this folder") from None
        self.queue = StudyQueue(self.out)
        self._resume()
        ae = AE(ae_title=self.options.ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for uid in self.sop_classes:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self._server = ae.start_server((self.options.host, self.options.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        self._worker = threading.Thread(target=self._work, name="breastai-serve-worker", daemon=True)
        self._worker.start()
        log.info("breastai serve: AE %s listening on %s:%d for %s images; results to %s; queue %s",
                 self.options.ae_title, self.options.host, self.port, "/".join(sorted(set(self.sop_classes.values()))),
                 self.options.forward or "nowhere (kept in the queue)", self.out)

    def request_stop(self) -> None:
        """Ask the node to stop (safe from a signal handler)."""
        self._stop.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop` is called."""
        while not self._stop.wait(0.5):
            pass

    def stop(self) -> None:
        """Stop listening, let the worker finish its current step, release the folder."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        self._exit.close()
        log.info("breastai serve: stopped")

    def __enter__(self) -> "DicomNode":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _resume(self) -> None:
        assert self.queue is not None
        dropped = unscored = unsent = 0
        for study in self.queue.studies():
            dropped += study.drop_incomplete()
            unscored += len(study.unscored())
            unsent += sum(len(r.unsent()) for r in study.rounds())
        if dropped or unscored or unsent:
            log.info("breastai serve: resuming: %d image(s) to score, %d object(s) to send, %d interrupted round(s) "
                     "to redo", unscored, unsent, dropped)

    # --- the SCP ---

    def _on_echo(self, event: Any) -> int:
        return 0x0000

    def _on_store(self, event: Any) -> int:
        assert self.queue is not None
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            modality = modality_and_intent(ds)[0]
            study, sop = uid_hash(ds.get("StudyInstanceUID")), uid_hash(ds.get("SOPInstanceUID"))
        except Exception as exc:  # noqa: BLE001 - a bad dataset is refused; the node stays up
            log.warning("refused an image: its dataset cannot be decoded (%s: %s)", type(exc).__name__, exc)
            return STATUS_UNREADABLE
        expected = self.sop_classes.get(str(event.context.abstract_syntax))
        if (modality or "").upper() != expected:
            log.warning("refused image %s of study %s: modality %s in a %s storage SOP class (status 0x%04X)",
                        sop, study, modality or "(none)", expected, STATUS_MODALITY)
            return STATUS_MODALITY
        if study is None or sop is None:
            log.warning("refused an image without a Study or SOP Instance UID (status 0x%04X)", STATUS_UNREADABLE)
            return STATUS_UNREADABLE
        try:
            self.queue.add(study, sop, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("cannot queue image %s of study %s: %s", sop, study, exc)
            return 0xA700  # Refused: Out of Resources (the disk); the sender may try again
        with self._lock:
            self._idle.discard(study)
        log.info("study %s: received image %s (%s)", study, sop, expected)
        return 0x0000

    # --- the worker ---

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self.process_once()
            except Exception:  # noqa: BLE001 - the worker must outlive any one study's failure
                log.exception("breastai serve: worker step failed; it goes on")
            self._stop.wait(self.options.poll_seconds)

    def process_once(self) -> None:
        """One pass over the queue: score the quiet studies, send what is unsent."""
        assert self.queue is not None
        now = time.time()
        for study in self.queue.studies():
            if self._stop.is_set():
                return
            with self._lock:
                if study.key in self._idle:
                    continue
            if self._retry_at.get(study.key, 0.0) > now:
                continue
            busy = False
            pending = study.unscored()
            if pending:
                busy = True
                if now - study.last_received() >= self.options.quiet_seconds:
                    self._score(study, pending)
            if self.options.forward is not None:
                for rnd in study.rounds():
                    if rnd.unsent():
                        busy = True
                        self._send(study, rnd)
            if not busy:
                with self._lock:
                    if not study.unscored():  # an image may have come in meanwhile
                        self._idle.add(study.key)

    def _score(self, study: Study, pending: dict[str, Path]) -> Round | None:
        keys = sorted(pending)
        folder = study.new_round()
        t0 = time.time()
        writer = DicomObjects(folder / "dicom", self.predictor, self.checkpoint, self.options.saliency)
        try:
            records, _ = run_predict(self.predictor, [str(pending[k]) for k in keys], folder / "predict",
                                     saliency=self.options.saliency, writers=[writer, PredictionTables()])
        except Exception as exc:  # noqa: BLE001 - the round is dropped and tried again later
            log.error("study %s: scoring failed (%s: %s); retrying in %.0f s", study.key, type(exc).__name__, exc,
                      self.options.retry_max_delay)
            study.drop_incomplete()
            self._retry_at[study.key] = time.time() + self.options.retry_max_delay
            return None
        results, objects = round_results(records)
        for key, value in results.items():
            if isinstance(value, dict):
                log.warning("study %s: image %s gets no result: %s", study.key, key, value["error"])
        rnd = study.complete_round(folder, keys, objects, results)
        log.info("study %s: round %s scored %d image(s), %d failed, %d object(s), in %.1f s", study.key, folder.name,
                 len(keys), sum(isinstance(v, dict) for v in results.values()), len(objects), time.time() - t0)
        return rnd

    def _send(self, study: Study, rnd: Round) -> None:
        dest = self.options.forward
        assert dest is not None
        delay = self.options.retry_delay
        for attempt in range(1, self.options.send_attempts + 1):
            try:
                for path, status in store_files(dest, self.options.ae_title, rnd.unsent()):
                    if status in _SENT_STATUSES:
                        rnd.mark_sent(path)
                    else:
                        log.warning("study %s: %s refused %s (status %s)", study.key, dest.ae_title, path.name,
                                    "none" if status is None else f"0x{status:04X}")
            except Exception as exc:  # noqa: BLE001 - network trouble: retried below
                log.warning("study %s: sending to %s failed (attempt %d of %d): %s", study.key, dest, attempt,
                            self.options.send_attempts, exc)
            if not rnd.unsent():
                log.info("study %s: round %s sent to %s (%d object(s))", study.key, rnd.dir.name, dest.ae_title,
                         len(rnd.objects))
                return
            if attempt < self.options.send_attempts and self._stop.wait(delay):
                return
            delay = min(delay * 2, self.options.retry_max_delay)
        self._retry_at[study.key] = time.time() + self.options.retry_max_delay
        log.warning("study %s: %d object(s) still unsent after %d attempt(s); next try in %.0f s", study.key,
                    len(rnd.unsent()), self.options.send_attempts, self.options.retry_max_delay)

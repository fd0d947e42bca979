"""``predict --engine ray``: the same records as the local path, on a local Ray instance (two actors)."""

from __future__ import annotations

import json

import pytest
from conftest import synth_rows
from test_predict_stream import Flaky

from breastai.inference.writers import default_writers, run_predict

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'breastai[ray]'): the Ray engine is untested")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'breastai[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_actors_give_the_local_records(local_ray, ckpt, synth_datalist, tmp_path):
    from breastai.inference.ray_engine import RayScoring

    images = [r["image"] for r in synth_rows(synth_datalist)[:6]]
    inputs = [*images, str(tmp_path / "missing.png"), images[0]]
    local, _ = run_predict(ckpt, inputs, tmp_path / "local", saliency="gradcam", tta=2, device="cpu")
    out = tmp_path / "ray"
    flaky = Flaky()
    flaky.fail_at = 3  # an interrupted local run, resumed on the actors
    with pytest.raises(RuntimeError):
        run_predict(ckpt, inputs, out, saliency="gradcam", tta=2, device="cpu",
                    writers=[flaky, *default_writers("gradcam")])
    records, run = run_predict(ckpt, inputs, out, saliency="gradcam", tta=2, device="cpu", resume=True,
                               writers=[Flaky(), *default_writers("gradcam")],
                               engine=RayScoring(ckpt, device="cpu"), workers=2)
    assert run["resumed"]["inputs"] == 3 and len(records) == len(local) == 8
    assert [r["probability"] for r in records] == [r["probability"] for r in local]  # to the last bit
    assert [r["uncertainty"] for r in records] == [r["uncertainty"] for r in local]
    assert records[6]["error"].endswith("file not found") and records[6]["probability"] is None
    maps = {k: v for k, v in local[0].items() if not k.startswith("saliency")}
    assert maps == {k: v for k, v in records[0].items() if not k.startswith("saliency")}
    assert all((out / r["saliency_npy"]).is_file() for r in records if r["error"] is None)
    final = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in final] == [r["id"] for r in local]

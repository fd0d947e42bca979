"""DDP on CPU: two gloo processes, the environment torchrun sets, the real training entry point."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from breastai.engine.run import main

    res = main(cfg)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"digest": res["last_weights_digest"], "run_dir": res["run_dir"],
                                                         "val_auc": res["val_auc"]}))


def test_two_gloo_ranks_stay_in_sync_and_write_once(synth_datalist, tmp_path, tiny_config):
    cfg = tiny_config(synth_datalist, tmp_path / "runs")
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["digest"] == r1["digest"], "ranks ended with different weights"
    assert r0["run_dir"] == r1["run_dir"]
    assert r0["val_auc"] == r1["val_auc"], "validation metrics are gathered across ranks"
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, f"one run folder, not {runs}"
    run = runs[0]
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1, "only rank 0 writes TensorBoard events"

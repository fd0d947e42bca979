"""Lesion attention loss (breastai.engine.attention): values on hand-made maps, and training with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from breastai.engine.attention import LesionAttentionLoss, cam_attention_loss, lesion_cells
from breastai.models.registry import MODELS, create_model
from breastai.engine.run import main as train_main


def _mask(h: int, w: int, cells: list[tuple[int, int]], scale: int = 8) -> torch.Tensor:
    m = torch.zeros(1, 1, h * scale, w * scale)
    for i, j in cells:
        m[0, 0, i * scale:(i + 1) * scale, j * scale:(j + 1) * scale] = 1
    return m


def test_loss_is_minus_log_of_the_softmax_mass_on_the_lesion():
    cam = torch.zeros(1, 4, 4)
    cam[0, 1, 2] = math.log(13.0)  # softmax: 13/28 at (1, 2), 1/28 at each of the 15 others
    mask = _mask(4, 4, [(1, 2), (3, 3)])
    expected = -math.log(14 / 28)
    assert float(cam_attention_loss(cam, mask, torch.tensor([1.0]))) == pytest.approx(expected, rel=1e-6)
    # Benign: the evidence for "benign" is -CAM, so the peak at (1, 2) now counts against it.
    expected_benign = -math.log((1 / 13 + 1) / (15 + 1 / 13))
    assert float(cam_attention_loss(cam, mask, torch.tensor([0.0]))) == pytest.approx(expected_benign, rel=1e-6)


def test_loss_ignores_empty_full_and_unlabelled_masks():
    cam = torch.randn(3, 4, 4, requires_grad=True)
    masks = torch.cat([torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32), _mask(4, 4, [(0, 0)])])
    loss = cam_attention_loss(cam, masks, torch.tensor([1.0, 1.0, -1.0]))
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph
    one = cam_attention_loss(cam, masks, torch.tensor([1.0, 1.0, 1.0]))
    assert float(one.detach()) == pytest.approx(float(-torch.log_softmax(cam[2].detach().flatten(), 0)[0]), rel=1e-6)


def test_covered_cells_are_the_mostly_covered_ones():
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 0:8, 0:8] = 1  # cell (0, 0) fully covered
    mask[0, 0, 8:13, 0:8] = 1  # cell (1, 0): 5 of 8 rows, covered
    mask[0, 0, 13:16, 0:8] = 0
    mask[0, 0, 0:2, 8:16] = 1  # cell (0, 1): grazed (2 of 8 rows)
    touched = lesion_cells(mask, (4, 4), "touched").reshape(4, 4)
    covered = lesion_cells(mask, (4, 4), "covered").reshape(4, 4)
    assert touched[0, 0] and touched[1, 0] and touched[0, 1] and int(touched.sum()) == 3
    assert covered[0, 0] and covered[1, 0] and not covered[0, 1] and int(covered.sum()) == 2
    # A lesion smaller than half a cell still has its best-covered cell.
    tiny = torch.zeros(1, 1, 32, 32)
    tiny[0, 0, 14:17, 22:24] = 1  # mostly in cell (1, 2)
    assert lesion_cells(tiny, (4, 4), "covered").reshape(4, 4).nonzero().tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="attention_cells"):
        lesion_cells(mask, (4, 4), "inside")


def test_gradient_moves_evidence_onto_the_lesion():
    cam = torch.zeros(1, 4, 4, requires_grad=True)
    cam_attention_loss(cam, _mask(4, 4, [(2, 2)]), torch.tensor([1.0])).backward()
    g = cam.grad[0]
    assert float(g[2, 2]) < 0 and bool((g.flatten()[torch.arange(16) != 10] > 0).all())


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.factory is None and s.task == "classification"])
def test_every_image_model_gives_its_class_activation_map(name):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, pretrained=False).train()
    att = LesionAttentionLoss(model, weight=2.0)
    x = torch.rand(2, 1, 64, 64)
    logit = model(x)
    batch = {"mask": torch.cat([_mask(4, 4, [(1, 1)], 16)] * 2), "label": torch.tensor([1.0, 0.0])}
    loss = att(batch, torch.device("cpu"))
    assert loss.ndim == 0 and float(loss.detach()) > 0
    (logit.sum() + loss).backward()
    with pytest.raises(RuntimeError, match="no feature map captured"):
        att(batch, torch.device("cpu"))


def test_training_names_the_hooked_layer_from_the_spec():
    model = create_model("small_cnn", in_chans=1, pretrained=False).train()
    model.target_layer_name = "no.such.layer"  # the instance's own name is not consulted when one is given
    att = LesionAttentionLoss(model, 1.0, layer=MODELS["small_cnn"].saliency_layer())
    model(torch.rand(2, 1, 64, 64))
    batch = {"mask": torch.cat([_mask(4, 4, [(1, 1)], 16)] * 2), "label": torch.tensor([1.0, 0.0])}
    assert float(att(batch, torch.device("cpu")).detach()) > 0


def test_models_without_a_cam_are_refused():
    feats = [f"f{i}" for i in range(4)]
    stats = {"mean": np.zeros(4), "scale": np.ones(4), "coef": np.ones(4), "intercept": 0.0}
    with pytest.raises(ValueError, match="attention_loss needs an image model"):
        LesionAttentionLoss(create_model("radiomics_logreg", feature_names=feats, stats=stats), 1.0)


def test_training_with_attention_loss_puts_evidence_on_the_lesion(synth_datalist, tiny_config, tmp_path):
    """Same seed and data with and without the loss: the guided model's CAM mass on the lesion is higher."""
    from breastai.models.checkpoint import model_from_checkpoint
    from breastai.models.checkpoint_io import load_checkpoint
    from breastai.data.datalist import read_datalist
    from breastai.engine.loaders import make_loader, build_dataset

    shares = {}
    for w in (0.0, 2.0):
        cfg = tiny_config(synth_datalist, tmp_path / str(w), "preprocess.mode=whole", "model.name=small_cnn",
                          "train.epochs=3", f"train.attention_loss={w}", "log.tensorboard=false")
        res = train_main(cfg)
        model = model_from_checkpoint(load_checkpoint(f"{res['run_dir']}/last.pt", resume=True)).train()
        att = LesionAttentionLoss(model, 1.0)
        records = read_datalist(synth_datalist, classes=cfg["data"]["classes"])
        batch = next(iter(make_loader(build_dataset(cfg, records, False), cfg, False, None, 0)))
        for m in model.modules():  # train mode for the hook, but no dropout noise / BN updates
            if isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm2d)):
                m.eval()
        with torch.no_grad():
            model(batch["image"])
            shares[w] = float(att(batch, torch.device("cpu")))
    assert shares[2.0] < shares[0.0]


class _Bright(torch.nn.Module):
    """A model whose class-activation map is its input: saliency peaks at the brightest pixel."""

    target_layer_name = "feat"

    def __init__(self):
        super().__init__()
        self.feat = torch.nn.Conv2d(1, 1, 1)
        self.head = torch.nn.Linear(1, 1)
        for p in (self.feat.weight, self.head.weight):
            torch.nn.init.ones_(p)
        torch.nn.init.zeros_(self.feat.bias)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.feat(x).mean((2, 3))).squeeze(1)


def _spot(y: int, x: int, mask_box: tuple[int, int, int, int] | None) -> dict:
    image = torch.full((1, 32, 32), 0.1)
    image[0, y - 1:y + 2, x - 1:x + 2] = 1.0
    mask = torch.zeros(1, 32, 32)
    if mask_box:
        y0, y1, x0, x1 = mask_box
        mask[0, y0:y1, x0:x1] = 1
    return {"image": image, "mask": mask}


def test_pointing_game_counts_maps_peaking_in_the_mask_and_leaves_the_model_alone():
    from breastai.engine.attention import PointingGame

    model = _Bright()
    pointing_game = PointingGame(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [
        _spot(8, 8, (4, 12, 4, 12)),  # peak inside its lesion
        _spot(24, 24, (4, 12, 4, 12)),  # peak outside
        _spot(20, 10, (16, 26, 6, 14)),  # inside
        _spot(8, 8, None),  # no lesion: not counted
        _spot(8, 8, (4, 12, 4, 12)),  # inside, but not asked for
    ]
    assert pointing_game(model, data, [0, 1, 2, 3], torch.device("cpu")) == (2, 3)
    assert pointing_game(model, data, [1], torch.device("cpu")) == (0, 1)
    # The explainer works on a copy: no hook left on the trained model, weights untouched.
    assert not model.feat._forward_hooks and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Each call uses the current weights: with the head negated no channel adds evidence, the map is 0 and points nowhere.
    with torch.no_grad():
        model.head.weight.neg_()
    assert pointing_game(model, data, [0, 2], torch.device("cpu")) == (0, 2)


def test_select_last_keeps_the_calibrated_last_epoch_without_changing_training(synth_datalist, tiny_config, tmp_path):
    """Same seed: the trajectory is the same; val_auc keeps its best epoch, last the final one (never
    stopped early), calibrated like any kept epoch; the validation pointing game is recorded."""
    from breastai.models.checkpoint_io import load_checkpoint

    runs = {}
    for select in ("val_auc", "last"):
        cfg = tiny_config(synth_datalist, tmp_path / select, "preprocess.mode=whole", "train.epochs=4",
                          "train.attention_loss=0.5", "train.early_stop_patience=1", f"train.select={select}",
                          "log.tensorboard=false")
        res = train_main(cfg)
        runs[select] = (res, load_checkpoint(f"{res['run_dir']}/best.pt"),
                        load_checkpoint(f"{res['run_dir']}/last.pt", resume=True))
    res, best, last = runs["last"]
    assert best.best_epoch == last.epoch == 3  # patience 1 did not stop it
    assert all(torch.equal(best.weights[k], v) for k, v in last.weights.items())
    assert best.temperature != 1.0 and 0.0 <= best.metrics["val_pointing"] <= 1.0
    res_auc, best_auc, last_auc = runs["val_auc"]
    if last_auc.epoch == 3:  # ran to the end: the same weights, and the best AUC is no lower than the last's
        assert res_auc["last_weights_digest"] == res["last_weights_digest"]
        assert best_auc.metrics["val_auc"] >= best.metrics["val_auc"]
    else:  # stopped early, one epoch after its best
        assert last_auc.epoch == best_auc.best_epoch + 1


def test_train_select_takes_known_words_only():
    from breastai.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.select must be one of val_auc, last"):
        load_config(None, ["train.select=best"])


@pytest.mark.parametrize("cap", [0, 2])
def test_validation_pointing_game_is_capped_or_off(synth_datalist, tiny_config, tmp_path, caplog, cap):
    import logging
    import re

    from breastai.models.checkpoint_io import load_checkpoint

    cfg = tiny_config(synth_datalist, tmp_path, "preprocess.mode=whole", "train.epochs=1", "train.attention_loss=0.5",
                      f"log.pointing_images={cap}", "log.tensorboard=false")
    with caplog.at_level(logging.INFO):
        res = train_main(cfg)
    metrics = load_checkpoint(f"{res['run_dir']}/best.pt").metrics
    counts = [tuple(map(int, m)) for m in re.findall(r"val pointing [\d.]+ \((\d+)/(\d+)\)", caplog.text)]
    if cap == 0:
        assert "val_pointing" not in metrics and not counts
    else:
        assert counts and all(0 <= h <= n == 2 for h, n in counts) and metrics["val_pointing"] in (0.0, 0.5, 1.0)


def test_pointing_images_must_not_be_negative():
    from breastai.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="log.pointing_images"):
        load_config(None, ["log.pointing_images=-1"])

"""Every setting: its built-in default (:data:`DEFAULTS`) and, for those that take one of a few
words, the words it takes (:data:`CHOICES`).

What the settings are lives here; how a configuration is resolved from them (a YAML file over the
defaults, ``key=value`` overrides over both, checks, resume rules) in :mod:`breastai.core.config`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "CHOICES"]

DEFAULTS: dict[str, Any] = {
    "run_name": None,
    "output_dir": "checkpoints",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "data": {
        "datalist": None,
        "classes": ["benign", "malignant"],
        "val_fraction": 0.15,
        # Seed of the fold and validation split; None = ``seed``. Fixing it while varying ``seed``
        # retrains on the same folds with another initialisation order (repeat runs of a recipe).
        "split_seed": None,
        "cache": "memory",  # memory | disk | none
        "cache_dir": None,
        "num_workers": 0,
        "reader_options": {},
        # Modality of the training images (US, MG, ...) for datalists without a ``modality`` column
        # and plain images; recorded in the checkpoint, whose predict refuses DICOM of another one.
        # None: unknown (a DICOM image's header still says).
        "modality": None,
    },
    "preprocess": {
        "mode": "whole",  # whole | crop
        "size": 224,
        "margin": 0.3,  # crop mode: context added around the lesion box, as a fraction of its side
        "min_crop": 64,  # crop mode: smallest crop side in source pixels
        "min_crop_fraction": 0.0,  # crop mode: smallest crop side as a fraction of the image's shorter side
        "normalize": "percentile",  # percentile | zscore | minmax
        "percentiles": [0.5, 99.5],
        "mask_channel": False,  # add the lesion mask as a second input channel
        # > 0: the mask channel's outline smoothed by a Gaussian of this fraction of the lesion's
        # equivalent diameter, in training and inference (a reader's pixel-scale roughness removed)
        "outline_smooth": 0.0,
        "equalize": False,  # histogram-equalise the cut region: any monotone grey curve (gain, dynamic range) removed
    },
    "augment": {
        "enabled": True,
        "hflip": 0.5,
        "vflip": 0.0,  # ultrasound depth runs down the image: vertical flips are unphysical there
        "affine": 0.7,
        "rotate_deg": 12.0,
        "scale": 0.12,
        "translate": 0.06,
        "gamma": [0.7, 1.5],
        "contrast_prob": 0.5,
        "noise_std": 0.03,
        "noise_prob": 0.3,
        "blur_prob": 0.2,
        "speckle_prob": 0.0,
        "coarse_outline": 0.0,  # P(mask channel shows the lesion's moment ellipse or box instead of its outline)
        # P(mask channel shows the outline dilated, eroded or smoothed, as another reader might trace it) ...
        "outline_jitter": 0.0,
        "outline_jitter_strength": 0.06,  # ... by up to this fraction of the lesion's equivalent diameter
        "calipers": 0.0,  # P(caliper marks drawn across the lesion, as sonographers burn them in)
    },
    "model": {
        "name": "efficientnet_lite0",
        "pretrained": True,
        "dropout": 0.2,
        "mask_init": "zero",  # zero | grey: mask channel of a pretrained stem (breastai.models.registry.create_model)
        "output_stride": 32,  # 16: finer last feature map and saliency map (efficientnet_lite0), ~1.35x compute
        # Radiomics and fusion models (breastai.models.fusion):
        "backbone": "efficientnet_lite0",  # image branch of fusion_concat / fusion_gated
        "radiomics_bins": 32,  # fixed bin number of the texture/histogram discretisation
        "select_corr": 0.95,  # drop one of each feature pair with |Spearman r| above this (training part)
        "radiomics_penalty": "l2",  # radiomics_logreg: l1 | l2 (C by inner CV on the training part)
        "fusion_dim": 128,  # fusion_gated: width of each modality's projection
        "fusion_prior": True,  # fusion_*: start from (and keep) a frozen radiomics logistic regression; learn the image's addition
    },
    "train": {
        "epochs": 12,
        "batch_size": 32,
        "lr": 1.0e-3,
        "weight_decay": 0.02,
        "warmup_epochs": 1,
        "min_lr_ratio": 0.02,
        "class_balance": "weighted_loss",  # weighted_loss | sampler | none
        "label_smoothing": 0.0,
        "loss": "ce",  # ce | focal (breastai.engine.losses: the formula of each)
        "focal_gamma": 3.0,
        "ema": 0.0,  # > 0: per-step decay of a moving average of the weights, which is validated and saved instead
        "attention_loss": 0.0,  # > 0: weight of the lesion attention loss (breastai.engine.attention; needs masks)
        "attention_cells": "touched",  # touched | covered: feature-map cells counted as the lesion's
        "early_stop_patience": 6,
        # Which epoch is kept: val_auc = the best validation AUC (with early stopping); last = the
        # last epoch (no early stopping), for objectives besides AUC that keep improving (attention).
        "select": "val_auc",
        "amp": True,
        "channels_last": True,
        "folds": 0,  # K > 1: K-fold CV; sites: leave-one-site-out CV (one fold per datalist site)
        "threads": 0,  # 0 = torch default
        "grad_clip": 2.0,
    },
    "eval": {
        "threshold_method": "youden",
        "bootstrap": 2000,
        "calibrate": True,
        "calibration_targets": "hard",  # hard | platt: Platt's targets keep T finite on separable validation data
        # Score an image as the mean logit of itself and its left-right mirror, wherever a score is
        # made (validation and epoch selection, held-out parts, evaluate, predict).
        "flip_average": False,
        # Out-of-distribution flag: Mahalanobis distance of the embedding to the training part's,
        # flagged above this quantile of the validation part's distances (0: no detector).
        "ood_quantile": 0.99,
        # ... and the flag this many times further out: another site's scanner moves the features
        # too, and the flag is for inputs of the wrong kind (set by a rule fixed beforehand, between
        # BrEaST's lesions and mammograms on the BUSI model: docs/experiments.md).
        "ood_margin": 1.87,
    },
    # Lesion segmenters (models whose task is segmentation: unet_lite0, unet_small).
    "seg": {
        "loss": "dicece",  # dicece | dicefocal: MONAI's DiceCELoss / DiceFocalLoss on the mask logits
        # batch: one Dice over all pixels of the batch; lesion_images: a Dice per image that holds a
        # lesion, averaged (a missed small lesion costs its image a whole Dice, as the metric counts it).
        "dice": "batch",
        "presence_weight": 0.5,  # weight of the lesion-presence BCE beside the mask loss
        "pixel_threshold": 0.5,  # mask probability at which a pixel is lesion
        # A connected component is a lesion when it covers at least this fraction of the image ...
        "min_area_fraction": 0.002,
        # ... and at least this fraction of the largest component (specks beside a lesion are not lesions).
        "min_component_fraction": 0.1,
        # An image with no component at pixel_threshold is outlined at this fraction of its own highest
        # mask probability instead (0: never), so the presence threshold, not the pixel threshold,
        # decides whether a faint lesion is kept.
        "peak_fraction": 0.0,
        # true: the presence probability alone decides whether an image holds lesions (the mask only
        # places them); false: a lesion is kept on min(presence, its mask peak).
        "presence_gate": False,
        # true: the mask is read from the image and its mirror image (logits averaged), the presence from
        # the image alone (eval.flip_average averages both; set one of the two)
        "flip_mask": False,
        # The presence threshold still finds a lesion in this fraction of the validation images holding
        # one (a missed lesion is never scored; a false one is scored and shown), placed in the middle of
        # the gap below the weakest kept lesion's score; 0: eval.threshold_method on the presence alone.
        "presence_sensitivity": 0.95,
        "overlay_images": 8,  # TensorBoard: predicted against traced outlines of this many fixed validation images
    },
    "log": {
        "tensorboard": True,
        "image_grid": 16,
        "progress": True,
        # With the attention loss on: the pointing game on at most this many malignant validation
        # images every epoch (~50 ms each on 2 CPU cores); 0 turns it off.
        "pointing_images": 200,
    },
}


# Settings that take one of a few words. Modules that check a word themselves too (calibration's
# TARGETS, models' MASK_INITS) take their tuple from here, so the two checks cannot disagree.
CHOICES: dict[str, tuple[str, ...]] = {
    "preprocess.mode": ("whole", "crop"),
    "preprocess.normalize": ("percentile", "zscore", "minmax"),
    "train.class_balance": ("weighted_loss", "sampler", "none"),
    "train.select": ("val_auc", "last"),
    "train.loss": ("ce", "focal"),
    "model.mask_init": ("zero", "grey"),
    "eval.calibration_targets": ("hard", "platt"),
    "seg.loss": ("dicece", "dicefocal"),
    "seg.dice": ("batch", "lesion_images"),
}

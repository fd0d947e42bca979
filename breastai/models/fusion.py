"""Radiomics-only and fusion models: ``model(x, radiomics=r)`` with ``r`` the lesion's raw feature vector.

Every model here holds its own feature selection and standardisation as buffers (fitted on the
training part, see :mod:`breastai.models.radiomics_fit`), so a checkpoint maps the raw
vector computed from image and mask to a score with nothing else needed. Constructor arguments
that define the architecture are kept in ``init_kwargs`` and stored in the checkpoint's ``model``
entry; numbers (means, scales, weights) live in the state dict.

- ``radiomics_logreg``: selected, standardised features -> logistic regression fitted in closed
  form (sklearn) at construction; the training loop does not take gradient steps for it.
- ``fusion_concat``: CNN pooled embedding ++ standardised radiomics -> dropout -> linear.
- ``fusion_gated``: each modality projected to ``fusion_dim``, scaled by a learned sigmoid gate
  computed from both (``g = sigmoid(W [e; r])``), concatenated -> dropout -> linear.

Both fusion models take ``prior=True`` (the default in configs): a frozen radiomics logistic
regression, fitted in closed form on the training part like ``radiomics_logreg``, is added to the
fusion head's output, and the head starts at zero. Training then starts from the radiomics model
and learns only what the image adds, instead of letting a CNN that can memorise a few hundred
training images crowd out the mask-shape features that generalise across sites.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from breastai.models.classifier import Classifier
from breastai.models.registry import MODELS, ModelSpec, create_model, get_spec, register_model

__all__ = ["RadiomicsInput", "RadiomicsLogReg", "FusionConcat", "FusionGated", "DEFAULT_N_RADIOMICS",
           "DEFAULT_BACKBONE"]

# Placeholder feature count for a model built without fitted statistics (registry tests, shapes).
DEFAULT_N_RADIOMICS = 8
# The fusion models' image branch when no model.backbone is given.
DEFAULT_BACKBONE = "efficientnet_lite0"


class RadiomicsInput(nn.Module):
    """Raw radiomics vector -> selected, standardised, clipped features.

    Buffers ``index`` (positions of the selected features in the raw vector), ``mean`` and
    ``scale`` (from the training part). Non-finite values become the training mean (0 after
    standardisation); standardised values are clipped to ``±clip`` so one extreme lesion cannot
    dominate a linear model.
    """

    def __init__(self, feature_names: Sequence[str], selected: Sequence[str], clip: float = 10.0):
        super().__init__()
        missing = [s for s in selected if s not in feature_names]
        if missing:
            raise ValueError(f"selected radiomics features not among the feature names: {missing[:5]}")
        if not selected:
            raise ValueError("no radiomics feature selected: the model would have no radiomics input")
        pos = {n: i for i, n in enumerate(feature_names)}
        self.register_buffer("index", torch.tensor([pos[s] for s in selected], dtype=torch.long))
        self.register_buffer("mean", torch.zeros(len(selected)))
        self.register_buffer("scale", torch.ones(len(selected)))
        self.n_in, self.n_out, self.clip = len(feature_names), len(selected), float(clip)

    def set_stats(self, mean: Any, scale: Any) -> None:
        """Standardisation fitted on the training part."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.n_out or scale.numel() != self.n_out or not bool((scale > 0).all()):
            raise ValueError(f"standardisation needs {self.n_out} means and positive scales")
        self.mean.copy_(mean)
        self.scale.copy_(scale)

    def forward(self, radiomics: torch.Tensor | None, owner: str = "model") -> torch.Tensor:
        if radiomics is None:
            raise ValueError(
                f"{owner} needs the lesion's radiomics vector: call model(x, radiomics=r); compute r from the "
                "image and its lesion mask with breastai.radiomics.transform.RadiomicsFeaturesd"
            )
        if radiomics.ndim != 2 or radiomics.shape[1] != self.n_in:
            raise ValueError(f"{owner}: radiomics must have shape (B, {self.n_in}), got {tuple(radiomics.shape)}")
        z = (radiomics.float().index_select(1, self.index) - self.mean) / self.scale
        return torch.nan_to_num(z, nan=0.0, posinf=self.clip, neginf=-self.clip).clamp(-self.clip, self.clip)


def _load_logreg(linear: nn.Linear, stats: dict[str, Any]) -> None:
    """Closed-form logistic regression weights (``stats['coef']``, ``stats['intercept']``) into ``linear``."""
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(stats["coef"], dtype=torch.float32).reshape(1, -1))
        linear.bias.copy_(torch.as_tensor(stats["intercept"], dtype=torch.float32).reshape(1))


def _names(feature_names: Sequence[str] | None, selected: Sequence[str] | None) -> tuple[list[str], list[str]]:
    names = list(feature_names) if feature_names is not None else [f"feature_{i}" for i in range(DEFAULT_N_RADIOMICS)]
    return names, list(selected) if selected is not None else list(names)


class RadiomicsLogReg(nn.Module):
    """Logistic regression on selected, standardised radiomics; the image input is ignored.

    Its weights come from sklearn at construction (``stats['coef']``, ``stats['intercept']``), so
    training takes no gradient steps (its registry entry says ``closed_form``).
    """

    def __init__(self, feature_names: Sequence[str] | None = None, selected: Sequence[str] | None = None,
                 stats: dict[str, Any] | None = None):
        super().__init__()
        names, sel = _names(feature_names, selected)
        self.radiomics = RadiomicsInput(names, sel)
        self.linear = nn.Linear(len(sel), 1)
        self.n_features = len(sel)
        self.fit_loss = float("nan")
        self.init_kwargs = {"feature_names": names, "selected": sel}
        self.target_layer_name = ""  # no spatial feature map (its spec: uses_image=False)
        if stats:
            self.radiomics.set_stats(stats["mean"], stats["scale"])
            _load_logreg(self.linear, stats)
            self.fit_loss = float(stats.get("fit_loss", float("nan")))

    def embed(self, x: torch.Tensor | None, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised selected features (B, n_features)."""
        return self.radiomics(radiomics, "radiomics_logreg")

    def forward(self, x: torch.Tensor | None, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        """Malignancy logits (B,)."""
        return self.linear(self.embed(x, radiomics)).squeeze(1)


class _FusionBase(nn.Module):
    """Image branch (a registry CNN without its head) + radiomics input; subclasses define ``_join``.

    ``logit = head(dropout(_join(e, r))) [+ prior(r)]`` with ``e`` the pooled image embedding and
    ``r`` the standardised selected radiomics.
    """

    def __init__(self, name: str, in_chans: int, pretrained: bool, dropout: float, backbone: str,
                 feature_names: Sequence[str] | None, selected: Sequence[str] | None,
                 stats: dict[str, Any] | None, extra: dict[str, Any], prior: bool = False, mask_init: str = "zero"):
        super().__init__()
        if backbone not in MODELS or get_spec(backbone).factory is not None:
            raise ValueError(f"{name}: model.backbone must be an image model of the registry, got {backbone!r}")
        image_spec = get_spec(backbone)
        image = create_model(backbone, in_chans=in_chans, pretrained=pretrained and image_spec.pretrained_available,
                             dropout=dropout, mask_init=mask_init)
        assert isinstance(image, Classifier)
        # Only the pooled embedding is used: drop the image-only head so every parameter trains.
        image.head, image.dropout = nn.Identity(), nn.Identity()
        self.image = image
        names, sel = _names(feature_names, selected)
        self.radiomics = RadiomicsInput(names, sel)
        if stats:
            self.radiomics.set_stats(stats["mean"], stats["scale"])
        self.model_name = name
        self.target_layer_name = get_spec(name).saliency_layer(backbone)
        self.init_kwargs = {"backbone": backbone, "feature_names": names, "selected": sel, "prior": bool(prior), **extra}
        self.prior: nn.Linear | None = None
        if prior:
            self.prior = nn.Linear(len(sel), 1)
            self.prior.requires_grad_(False)
            if stats and "coef" in stats:
                _load_logreg(self.prior, stats)

    def _zero_head(self) -> None:
        # With a prior the untrained model equals the radiomics logistic regression.
        if self.prior is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _join(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, x: torch.Tensor, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        """Joint representation (B, n_features)."""
        return self._join(*self._inputs(x, radiomics))

    def forward(self, x: torch.Tensor, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        """Malignancy logits (B,): fusion head, plus the radiomics prior when there is one."""
        e, r = self._inputs(x, radiomics)
        z = self.head(self.dropout(self._join(e, r))).squeeze(1)
        return z + self.prior(r).squeeze(1) if self.prior is not None else z

    def _inputs(self, x: torch.Tensor, radiomics: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.radiomics(radiomics, self.model_name)
        if r.shape[0] != x.shape[0]:
            raise ValueError(f"{self.model_name}: {x.shape[0]} images but {r.shape[0]} radiomics vectors")
        return self.image.embed(x), r


class FusionConcat(_FusionBase):
    """``[embedding; standardised radiomics] -> dropout -> linear``."""

    def __init__(self, in_chans: int = 1, pretrained: bool = False, dropout: float = 0.2,
                 backbone: str = DEFAULT_BACKBONE, feature_names: Sequence[str] | None = None,
                 selected: Sequence[str] | None = None, stats: dict[str, Any] | None = None, prior: bool = False,
                 mask_init: str = "zero"):
        super().__init__("fusion_concat", in_chans, pretrained, dropout, backbone, feature_names, selected, stats, {},
                         prior, mask_init)
        self.n_features = self.image.n_features + self.radiomics.n_out
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.n_features, 1)
        self._zero_head()

    def _join(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.cat([e, r], 1)


class FusionGated(_FusionBase):
    """``h = [g_e * proj_e(e); g_r * proj_r(r)]`` with ``(g_e, g_r) = sigmoid(W [e; r])`` -> dropout -> linear."""

    def __init__(self, in_chans: int = 1, pretrained: bool = False, dropout: float = 0.2,
                 backbone: str = DEFAULT_BACKBONE, feature_names: Sequence[str] | None = None,
                 selected: Sequence[str] | None = None, stats: dict[str, Any] | None = None, fusion_dim: int = 128,
                 prior: bool = False, mask_init: str = "zero"):
        super().__init__("fusion_gated", in_chans, pretrained, dropout, backbone, feature_names, selected, stats,
                         {"fusion_dim": int(fusion_dim)}, prior, mask_init)
        n_e, n_r, d = self.image.n_features, self.radiomics.n_out, int(fusion_dim)
        self.proj_image = nn.Sequential(nn.Linear(n_e, d), nn.ReLU(inplace=True))
        self.proj_radiomics = nn.Sequential(nn.Linear(n_r, d), nn.ReLU(inplace=True))
        self.gate = nn.Linear(n_e + n_r, 2)
        self.n_features = 2 * d
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.n_features, 1)
        self._zero_head()

    def gates(self, x: torch.Tensor, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample modality gates (B, 2): image, radiomics."""
        e, r = self._inputs(x, radiomics)
        return torch.sigmoid(self.gate(torch.cat([e, r], 1)))

    def _join(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([e, r], 1)))
        return torch.cat([g[:, :1] * self.proj_image(e), g[:, 1:] * self.proj_radiomics(r)], 1)


def _logreg(in_chans: int = 1, pretrained: bool = False, dropout: float = 0.0, **kw: Any) -> RadiomicsLogReg:
    return RadiomicsLogReg(kw.get("feature_names"), kw.get("selected"), kw.get("stats"))


def _fusion_factory(cls: type[_FusionBase], keys: tuple[str, ...]):
    """Registry factory: ``create_model`` passes every model.* option; ``cls`` takes only ``keys``."""

    def build(in_chans: int = 1, pretrained: bool = False, dropout: float = 0.2, **kw: Any) -> _FusionBase:
        return cls(in_chans, pretrained, dropout, **{k: kw[k] for k in keys if k in kw})

    return build


_FUSION_KEYS = ("backbone", "feature_names", "selected", "stats", "prior", "mask_init")
_concat = _fusion_factory(FusionConcat, _FUSION_KEYS)
_gated = _fusion_factory(FusionGated, (*_FUSION_KEYS, "fusion_dim"))


register_model("radiomics_logreg", ModelSpec(
    None, target_layer="", pretrained_available=False,
    description="logistic regression on selected, standardised radiomics (closed form, sklearn)",
    requires_radiomics=True, uses_image=False, closed_form=True, factory=_logreg,
))
# The fusion models' saliency layer is their image branch's: "image." + the backbone's target layer.
register_model("fusion_concat", ModelSpec(
    None, target_layer="", pretrained_available=True,
    description="CNN embedding concatenated with selected radiomics -> linear",
    requires_radiomics=True, factory=_concat, image_module="image", default_backbone=DEFAULT_BACKBONE,
))
register_model("fusion_gated", ModelSpec(
    None, target_layer="", pretrained_available=True,
    description="CNN embedding and radiomics, each gated by a learned sigmoid -> linear",
    requires_radiomics=True, factory=_gated, image_module="image", default_backbone=DEFAULT_BACKBONE,
))

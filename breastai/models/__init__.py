"""Models: the registry (``create_model`` over :data:`MODELS`), the classifiers, checkpoints,
calibration, saliency and test-time augmentation.

The registry is filled by explicit imports of the modules that define models, so importing any
part of this package registers every model.
"""

from breastai.models import backbones, fusion, segmenter  # noqa: F401  (register the image, radiomics/fusion and segmentation models)
from breastai.models.classifier import Classifier
from breastai.models.registry import (
    MODELS,
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    register_model,
)

__all__ = ["Classifier", "ModelSpec", "MODELS", "create_model", "get_spec", "register_model", "list_models"]

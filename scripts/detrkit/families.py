"""The model-family table: for each DETR-family detector, its classes and the choices that follow from it.

"Which family is this model?" has one answer, `family_of(model)`, read off `config.model_type` (detrkit's and
transformers' own spellings alike). A new variant registers one `ModelFamily` here; the command line, training,
inference, export and the model cards look everything up in the table instead of testing strings.
"""
from __future__ import annotations

from dataclasses import dataclass

from detrkit import modeling, processing


@dataclass(frozen=True)
class ModelFamily:
    name: str  # also the model card template, model_cards/<name>.md (<name>_official.md for converted weights)
    title: str  # as the papers write it
    model_types: tuple[str, ...]  # detrkit's config.model_type first, then transformers' own spellings
    config_class: type
    base_model_class: type
    detection_class: type
    segmentation_class: type
    processor_class: type
    score_activation: str  # "softmax" over classes + "no object", or per-class "sigmoid" (focal loss)
    drawing_threshold: float  # sigmoid focal scores run lower than softmax ones
    paper_lr: float  # AdamW learning rate of the paper's recipe
    paper_epochs: int  # its COCO schedule from a random transformer

    @property
    def sigmoid_scores(self) -> bool:
        return self.score_activation == "sigmoid"

    @property
    def official_card_template(self) -> str:
        return f"{self.name}_official"


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    taken = {t for other in FAMILIES.values() for t in other.model_types} & set(family.model_types)
    if family.name in FAMILIES or taken:
        raise ValueError(f"family {family.name!r} or its model types {sorted(taken)} are already registered")
    FAMILIES[family.name] = family
    return family


def family_of(model_or_config) -> ModelFamily:
    """The family of a model, a config or a `model_type` string."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = [t for family in FAMILIES.values() for t in family.model_types]
    raise ValueError(f"model_type {model_type!r} is not a DETR-family detector detrkit knows (expected one of "
                     f"{', '.join(known)})")


DETR = register_family(ModelFamily(
    name="detr", title="DETR", model_types=(modeling.DetrConfig.model_type, "detr"),
    config_class=modeling.DetrConfig, base_model_class=modeling.DetrModel,
    detection_class=modeling.DetrForObjectDetection, segmentation_class=modeling.DetrForSegmentation,
    processor_class=processing.DetrImageProcessor, score_activation="softmax", drawing_threshold=0.5,
    paper_lr=1e-4, paper_epochs=500,
))
DEFORMABLE_DETR = register_family(ModelFamily(
    name="deformable_detr", title="Deformable DETR",
    model_types=(modeling.DeformableDetrConfig.model_type, "deformable_detr"),
    config_class=modeling.DeformableDetrConfig, base_model_class=modeling.DeformableDetrModel,
    detection_class=modeling.DeformableDetrForObjectDetection,
    segmentation_class=modeling.DeformableDetrForSegmentation,
    processor_class=processing.DeformableDetrImageProcessor, score_activation="sigmoid", drawing_threshold=0.3,
    paper_lr=2e-4, paper_epochs=50,
))

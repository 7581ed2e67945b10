"""The parameters only training uses, kept apart so that nothing of them reaches inference or a saved model.

Denoising (denoising.py) embeds each noised label as a query's content and, in models whose queries carry no box
(DETR, one-stage Deformable DETR), each noised box as a query's position: DAB-DETR's sine embedding of the 4
coordinates through a 2-layer MLP. H-DETR's one-to-many branch adds its own learned queries. `save_pretrained`
leaves these out (`_keys_to_ignore_on_save`), so a model trained with them saves exactly the keys of one trained
without, and transformers' own classes load it; loading re-creates them freshly, as a training run resumes them
from its checkpoints (accelerate state), not from the exported model.
"""

import torch
from torch import nn

from .denoising import DenoisingQueries, build_denoising_queries
from .detr_base import MLP
from .position_encoding import box_position_embedding, inverse_sigmoid

PREFIX = "training_queries"


class TrainingQueries(nn.Module):
    def __init__(self, config, embeds_boxes: bool, one_to_many_width: int = 0):
        super().__init__()
        d_model = config.d_model
        # built and initialised (detr_base.py) from their own random stream: every other weight of a model starts as
        # without them, so a recipe's effect is measured from the same initialisation
        with torch.random.fork_rng(devices=[]):
            self.label_embedding = nn.Embedding(config.num_labels, d_model) if config.uses_denoising else None
            self.box_embedding = (MLP(2 * d_model, d_model, d_model, 2) if config.uses_denoising and embeds_boxes
                                  else None)
            num_one_to_many = getattr(config, "num_queries_one_to_many", 0)
            self.one_to_many = nn.Embedding(num_one_to_many, one_to_many_width) if one_to_many_width else None
        for index, module in enumerate(self.modules()):
            module.training_only_stream = index

    @staticmethod
    def wanted(config, one_to_many_width: int = 0) -> bool:
        return config.uses_denoising or bool(one_to_many_width)

    def denoising_queries(self, labels: list[dict], config) -> DenoisingQueries | None:
        if self.label_embedding is None:
            return None
        return build_denoising_queries(labels, config, self.label_embedding)

    def box_query_position(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, P, 4) normalized cxcywh -> (B, P, d_model) query positions."""
        d_model = self.box_embedding.layers[-1].out_features
        return self.box_embedding(box_position_embedding(inverse_sigmoid(boxes), d_model // 2))

    def unused_parameters_term(self) -> torch.Tensor:
        """0, depending on every parameter: a batch without boxes builds no denoising queries, and DistributedDataParallel
        waits for a gradient of every parameter on every rank (DINO adds the same zero)."""
        return sum(p.view(-1)[0] for p in self.parameters()) * 0.0


def ignored_on_save(module: nn.Module) -> set[str]:
    """The state-dict keys of a model's TrainingQueries, as `_keys_to_ignore_on_save` wants them (exact keys)."""
    return {f"{PREFIX}.{key}" for key in module.state_dict()} if module is not None else set()

"""The parameters only training uses, kept apart so that nothing of them reaches inference or a saved model.

Denoising (denoising.py) embeds each noised label as a query's content and, in models whose queries carry no box
(DETR, one-stage Deformable DETR), each noised box as a query's position: DAB-DETR's sine embedding of the 4
coordinates through a 2-layer MLP. H-DETR's one-to-many branch adds its own learned queries. `save_pretrained`
leaves these out (`_keys_to_ignore_on_save`), so a model trained with them saves exactly the keys of one trained
without, and transformers' own classes load it; loading re-creates them freshly, as a training run resumes them
from its checkpoints (accelerate state), not from the exported model.

The decoder runs training's queries beside the object queries, in the order [denoising | object | one-to-many];
`QueryParts` names the three parts (their counts, or their decoder outputs), `split_training_queries` cuts the
decoder's outputs back into them and `training_self_attention_mask` hides them from one another: the one
plumbing of DETR and Deformable DETR alike.
"""

from typing import Generic, NamedTuple, TypeVar

import torch
from torch import nn

from .denoising import DenoisingQueries, build_denoising_queries, denoising_self_attention_mask
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


Part = TypeVar("Part")


class QueryParts(NamedTuple, Generic[Part]):
    """The decoder's queries by part, in its order: training's denoising queries, the object queries (the paper's,
    all that inference runs), training's one-to-many queries. Holds per part its count (`query_counts`) or its
    decoder outputs by name (`split_training_queries`); None for a training part that is off."""

    denoising: Part | None
    object: Part
    one_to_many: Part | None

    def training_parts(self) -> dict[str, Part]:
        """{"denoising", "one_to_many"} -> part, for the training parts that are on (empty at inference)."""
        return {name: part for name, part in zip(self._fields, self) if name != "object" and part is not None}


def query_counts(num_object: int, denoising: DenoisingQueries | None = None,
                 num_one_to_many: int = 0) -> QueryParts[int]:
    """How many queries of each part the decoder runs. The denoising part is on whenever denoising queries were
    built, even none (a batch without boxes); the one-to-many part when it has queries."""
    return QueryParts(denoising=len(denoising) if denoising is not None else None, object=num_object,
                      one_to_many=num_one_to_many or None)


def training_self_attention_mask(counts: QueryParts[int], denoising: DenoisingQueries | None,
                                 device=None) -> torch.Tensor | None:
    """The decoder's self-attention mask over the queries `counts` lays out; None where the object queries are
    alone and nothing needs hiding."""
    if not counts.denoising and not counts.one_to_many:
        return None
    return denoising_self_attention_mask(counts.denoising or 0, denoising.groups if denoising else 1, counts.object,
                                         counts.one_to_many or 0, device=device)


def split_training_queries(counts: QueryParts[int], denoising: DenoisingQueries | None,
                           **outputs: torch.Tensor | None) -> QueryParts[dict]:
    """The decoder's outputs (by name; each (..., queries, features), None passes through) cut into the parts of
    `counts`: {name: tensor} per part, the denoising part also with its "layout" for the set loss. Without training
    parts nothing is cut: the object part holds `outputs` as they are."""
    if not counts.training_parts():
        return QueryParts(denoising=None, object=outputs, one_to_many=None)
    sizes = [count or 0 for count in counts]
    cut = {name: tensor.split(sizes, dim=-2) if tensor is not None else (None,) * len(sizes)
           for name, tensor in outputs.items()}
    parts = [{name: pieces[index] for name, pieces in cut.items()} if count is not None else None
             for index, count in enumerate(counts)]
    if denoising is not None:
        parts[0]["layout"] = denoising.layout()
    return QueryParts(*parts)

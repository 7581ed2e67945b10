"""DETR: backbone -> transformer encoder-decoder -> class and box heads (Carion et al., 2020).

In training, DN-DETR's denoising queries (Li et al., 2022; `config.denoising_groups`, denoising.py), noised copies
of the ground truth to reconstruct, and H-DETR's one-to-many queries (Jia et al., 2023;
`config.num_queries_one_to_many`), learned positions matched to the targets repeated k times, can join the object
queries. They and their parameters (`training_queries`) exist only in training: inference, export and saved
checkpoints are the paper's DETR.

Sub-module names equal the on-disk weight names of transformers' `DetrForObjectDetection` checkpoints
(`model.backbone.conv_encoder.model.*`, `self_attn.out_proj`, `layers.N.fc1`, ...): transformers' v5 key renames
for its own "DetrModel" are not applied to custom-code classes, so identical names make transformers checkpoints,
our own save/load round trip and the trust_remote_code load all plain state-dict loads.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_detr import DetrConfig
from .detr_base import MLP, DetrFamilyPreTrainedModel, build_backbone, check_inputs, mask_if_padded, output_flags
from .denoising import DenoisingQueries
from .detr_transformer import Decoder, Encoder
from .loss import SetCriterion, compute_set_loss, validate_labels
from .position_encoding import build_position_encoding
from .training_queries import (TrainingQueries, ignored_on_save, query_counts, split_training_queries,
                               training_self_attention_mask)


@dataclass
class DetrModelOutput(ModelOutput):
    """
    last_hidden_state (B, Q, D): normalized output of the last decoder layer.
    intermediate_hidden_states (L, B, Q, D): every decoder layer's normalized output (when `auxiliary_loss`).
    encoder_last_hidden_state (B, HW, D): encoder memory. Hidden states / attentions: tuples, on request.
    training_queries: in training with labels, the decoder outputs of training's queries by part
        (training_queries.py): {"denoising": {"last_hidden_state" (B, P, D), "intermediate_hidden_states"
        (L, B, P, D) or None, "layout"}} (with denoising on) and {"one_to_many": {"last_hidden_state",
        "intermediate_hidden_states"}} (with one-to-many on); the fields above hold the object queries only
        (decoder hidden states and attentions: all queries, in the order [denoising | object | one-to-many]).
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    training_queries: dict | None = None


@dataclass
class DetrObjectDetectionOutput(ModelOutput):
    """
    loss: weighted sum of the set losses (when `labels` are given); loss_dict: the unweighted terms.
    logits (B, Q, num_labels + 1): class scores, the last one "no object".
    pred_boxes (B, Q, 4): normalized (cx, cy, w, h) relative to each image's unpadded size.
    auxiliary_outputs: [{"logits", "pred_boxes"}] of decoder layers 1..L-1 (with `auxiliary_loss` and labels).
    training_queries: DetrModelOutput's (the training-only queries' decoder outputs).
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    training_queries: dict | None = None


class DetrPreTrainedModel(DetrFamilyPreTrainedModel):
    config_class = DetrConfig
    config: DetrConfig
    _no_split_modules = ["ConvEncoder", "EncoderLayer", "DecoderLayer"]
    model_card_template = "detr"  # model_cards/<name>.md


class DetrModel(DetrPreTrainedModel):
    """Backbone + transformer, without heads: returns the decoder's per-query embeddings."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.position_embedding = build_position_encoding(config)
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.input_projection = nn.Conv2d(self.backbone.conv_encoder.channels[-1], config.d_model, kernel_size=1)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # training-only parameters: left out of saved checkpoints, None unless denoising or one-to-many is on; a
        # one-to-many query is a learned position, as DETR's object queries are
        width = config.d_model if config.num_queries_one_to_many else 0
        self.training_queries = (TrainingQueries(config, embeds_boxes=True, one_to_many_width=width)
                                 if TrainingQueries.wanted(config, width) else None)
        self._keys_to_ignore_on_save = ignored_on_save(self.training_queries)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        labels: list[dict] | None = None,
    ) -> DetrModelOutput | tuple:
        """pixel_values (B, 3, H, W); pixel_mask (B, H, W), 1 on real pixels and 0 on padding (default: all real);
        labels (training only, as the detection model takes them) feed the denoising and one-to-many queries."""
        output_attentions, output_hidden_states = output_flags(self.config, output_attentions, output_hidden_states)
        pixel_mask = check_inputs(pixel_values, pixel_mask, self.config.num_channels)
        batch_size = pixel_values.shape[0]

        feature_map, mask = self.backbone(pixel_values, pixel_mask)[-1]  # C5: (B, C, h, w), (B, h, w)
        pos = self.position_embedding(mask, dtype=pixel_values.dtype).flatten(2).transpose(1, 2)  # (B, hw, D)
        src = self.input_projection(feature_map).flatten(2).transpose(1, 2)  # (B, hw, D)
        # without padding every key is valid: no mask lets SDPA pick its fastest kernel
        key_padding_mask = mask_if_padded(mask.flatten(1), padding=False)  # True on valid keys

        memory, encoder_hidden_states, encoder_attentions = self.encoder(
            src, pos, key_padding_mask, output_attentions, output_hidden_states
        )
        extra = self.training and labels is not None and self.training_queries is not None  # training's queries
        num_one_to_many = self.config.num_queries_one_to_many if extra else 0
        query_pos = self._learned_queries(batch_size, num_one_to_many)
        tgt = torch.zeros_like(query_pos)
        denoising = self.training_queries.denoising_queries(labels, self.config) if extra else None
        if denoising is not None:
            query_pos, tgt = self._with_denoising_queries(denoising, query_pos, tgt)
        counts = query_counts(self.config.num_queries, denoising, num_one_to_many)
        self_attention_mask = training_self_attention_mask(counts, denoising, device=tgt.device)
        output, intermediate, decoder_hidden_states, decoder_attentions, cross_attentions = self.decoder(
            tgt,
            memory,
            pos,
            query_pos,
            key_padding_mask,
            return_intermediate=self.config.auxiliary_loss,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            self_attention_mask=self_attention_mask,
        )
        if counts.training_parts():
            # a batch without boxes has no denoising queries: the zero term still gives every parameter a gradient
            output = output + self.training_queries.unused_parameters_term()
        parts = split_training_queries(counts, denoising, last_hidden_state=output,
                                       intermediate_hidden_states=intermediate)
        return DetrModelOutput(
            **parts.object,
            decoder_hidden_states=decoder_hidden_states,
            decoder_attentions=decoder_attentions,
            cross_attentions=cross_attentions,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attentions=encoder_attentions,
            training_queries=parts.training_parts() or None,
        )

    def _learned_queries(self, batch_size: int, num_one_to_many: int):
        """DETR's object queries, learned positions with no content, then the one-to-many branch's (training)."""
        weight = self.query_position_embeddings.weight
        if num_one_to_many:
            weight = torch.cat([weight, self.training_queries.one_to_many.weight])
        return weight[None].expand(batch_size, -1, -1)

    def _with_denoising_queries(self, denoising: DenoisingQueries, query_pos, tgt):
        """[denoising | object] queries: a denoising query's content is its noised label's embedding and its
        position the embedding of its noised box, as DN-DETR's anchors (DETR has no reference points)."""
        denoising_pos = self.training_queries.box_query_position(denoising.boxes)
        return torch.cat([denoising_pos, query_pos], 1), torch.cat([denoising.content, tgt], 1)


class DetrForObjectDetection(DetrPreTrainedModel):
    """DETR with the class head (num_labels + "no object") and the 3-layer box FFN; computes the set loss when
    `labels` (transformers format: [{"class_labels": (T,), "boxes": (T, 4) normalized cxcywh}]) are given."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.model = DetrModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = MLP(config.d_model, config.d_model, 4, num_layers=3)
        self.post_init()

    def _heads(self, hidden_states):
        return self.class_labels_classifier(hidden_states), self.bbox_predictor(hidden_states).sigmoid()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> DetrObjectDetectionOutput | tuple:
        if labels is not None:  # before the denoising queries are built from them
            validate_labels(labels, pixel_values.shape[0], self.config.num_labels)
        outputs = self.model(pixel_values, pixel_mask, output_attentions, output_hidden_states, labels=labels,
                             return_dict=True)
        logits, pred_boxes = self._heads(outputs.last_hidden_state)

        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            predictions = {"logits": logits, "pred_boxes": pred_boxes}
            if self.config.auxiliary_loss:
                auxiliary_outputs = self._auxiliary(outputs.intermediate_hidden_states)
                predictions["auxiliary_outputs"] = auxiliary_outputs
            training_queries = outputs.training_queries or {}
            if "denoising" in training_queries:
                predictions["denoising"] = self._training_query_predictions(training_queries["denoising"])
            if "one_to_many" in training_queries:
                predictions["one_to_many"] = self._training_query_predictions(training_queries["one_to_many"])
            loss, loss_dict = compute_set_loss(SetCriterion.from_config(self.config), predictions, labels)

        return DetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            training_queries=outputs.training_queries,
        )

    def _auxiliary(self, intermediate_hidden_states) -> list[dict]:
        """The heads on every decoder layer but the last."""
        aux_logits, aux_boxes = self._heads(intermediate_hidden_states[:-1])
        return [{"logits": c, "pred_boxes": b} for c, b in zip(aux_logits, aux_boxes)]

    def _training_query_predictions(self, decoded: dict) -> dict:
        """The set loss's view of training-only queries: the same heads on their decoder outputs (and, for the
        denoising queries, the layout pairing each with its target)."""
        logits, pred_boxes = self._heads(decoded["last_hidden_state"])
        auxiliary = self._auxiliary(decoded["intermediate_hidden_states"]) if self.config.auxiliary_loss else None
        return {"logits": logits, "pred_boxes": pred_boxes, "auxiliary_outputs": auxiliary,
                **decoded.get("layout", {})}


__all__ = [
    "DetrPreTrainedModel",
    "DetrModel",
    "DetrForObjectDetection",
    "DetrModelOutput",
    "DetrObjectDetectionOutput",
    "MLP",
]

"""Deformable DETR (Zhu et al., ICLR 2021): DeformableDetrModel and DeformableDetrForObjectDetection.

Image -> timm backbone (C3-C5) -> 1x1 conv + GroupNorm to d_model per level (+ stride-2 3x3 convs for extra
levels) -> level embeddings + sine positions -> deformable encoder -> queries with reference points (learned,
or the encoder's top-k proposals in the two-stage variant) -> deformable decoder -> per-layer class (sigmoid)
and box heads; boxes are predicted as offsets from the reference points in inverse-sigmoid space.

Module names follow transformers' on-disk checkpoint names, so its DeformableDetrForObjectDetection files load
unchanged.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from transformers.utils import ModelOutput, can_return_tuple

from .configuration_deformable_detr import DeformableDetrConfig
from .deformable_attention import MultiScaleDeformableAttention
from .deformable_transformer import DeformableDecoder, DeformableEncoder, encoder_output_proposals
from .denoising import DenoisingQueries
from .detr_base import MLP, DetrFamilyPreTrainedModel, build_backbone, check_inputs, mask_if_padded, output_flags
from .loss import SetCriterion, compute_set_loss, validate_labels
from .position_encoding import box_position_embedding, build_position_encoding, inverse_sigmoid
from .training_queries import (TrainingQueries, ignored_on_save, query_counts, split_training_queries,
                               training_self_attention_mask)


@dataclass
class DeformableDetrModelOutput(ModelOutput):
    """
    last_hidden_state (B, Q, C): output of the last decoder layer.
    intermediate_hidden_states (B, num_decoder_layers, Q, C): every decoder layer's output.
    init_reference_points (B, Q, 2 or 4): reference points fed to the first decoder layer.
    intermediate_reference_points (B, num_decoder_layers, Q, 2 or 4): those each decoder layer produced.
    encoder_last_hidden_state (B, S, C): encoder memory over the flattened levels.
    enc_outputs_class (B, S, num_labels), enc_outputs_coord_logits (B, S, 4): two-stage encoder proposals
        (scores, box logits) at every pixel of every level. Hidden states / attentions: tuples, on request.
    training_queries: in training with labels, the decoder outputs of training's queries by part
        (training_queries.py: "denoising", "one_to_many"): {"intermediate_hidden_states" (B, layers, N, C),
        "init_reference_points", "intermediate_reference_points"}, the denoising part also with its "layout";
        the fields above hold the object queries only.
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    init_reference_points: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None
    training_queries: dict | None = None


@dataclass
class DeformableDetrObjectDetectionOutput(ModelOutput):
    """
    loss: weighted sum of the set losses (when `labels` are given); loss_dict: the unweighted terms (`_enc`
        terms for two-stage proposals).
    logits (B, Q, num_labels): sigmoid class logits (no "no object" class).
    pred_boxes (B, Q, 4): normalized (cx, cy, w, h) relative to each image's unpadded size.
    auxiliary_outputs: [{"logits", "pred_boxes"}] of decoder layers 1..L-1 (with `auxiliary_loss`).
    The other fields: those of DeformableDetrModelOutput.
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
    init_reference_points: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None
    training_queries: dict | None = None


class DeformableDetrPreTrainedModel(DetrFamilyPreTrainedModel):
    """The shared base (loading without backbone downloads, model card on save, push_to_hub) with the paper's
    initialisation."""

    config_class = DeformableDetrConfig
    config: DeformableDetrConfig
    model_card_template = "deformable_detr"
    _no_split_modules = ["ConvEncoder", "DeformableEncoderLayer", "DeformableDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MultiScaleDeformableAttention):
            module.reset_parameters()
        elif isinstance(module, DeformableDetrModel):
            init.normal_(module.level_embed)
            for projection in module.input_proj:
                init.xavier_uniform_(projection[0].weight, gain=1.0)
                init.constant_(projection[0].bias, 0.0)
            if not self.config.two_stage:
                init.xavier_uniform_(module.reference_points.weight, gain=1.0)
                init.constant_(module.reference_points.bias, 0.0)
            _init_heads(module.decoder.class_embed or [], module.decoder.bbox_embed or [], self.config)
        elif isinstance(module, DeformableDetrForObjectDetection):
            _init_heads(module.class_embed, module.bbox_embed, self.config)


def _init_heads(class_heads, box_heads, config):
    """Focal loss starts every class at the prior probability 0.01 (RetinaNet): the many background queries
    would otherwise dominate the first updates. Box heads start at zero offsets from the reference points; the
    first layer's boxes small (sigmoid(-2) of the image, the official code) unless two-stage proposals already
    carry a size."""
    prior_bias = -math.log((1 - 0.01) / 0.01)
    for head in class_heads:
        init.constant_(head.bias, prior_bias)
    for head in box_heads:
        init.constant_(head.layers[-1].weight, 0.0)
        init.constant_(head.layers[-1].bias, 0.0)
    if box_heads and not config.two_stage:
        # a whole-tensor copy: init's guard against overwriting loaded weights does not see slices
        init.copy_(box_heads[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))


def _prediction_heads(config, count: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """`count` class heads (sigmoid logits, no "no object") and 3-layer box heads."""
    class_heads = nn.ModuleList(nn.Linear(config.d_model, config.num_labels) for _ in range(count))
    box_heads = nn.ModuleList(MLP(config.d_model, config.d_model, 4, num_layers=3) for _ in range(count))
    return class_heads, box_heads


def _num_predictions(config) -> int:
    """One prediction per decoder layer, plus the encoder proposals' in the two-stage variant."""
    return config.decoder_layers + 1 if config.two_stage else config.decoder_layers


class DeformableDetrModel(DeformableDetrPreTrainedModel):
    """Backbone + multi-scale deformable encoder-decoder, without the final heads. It owns what the variants
    need inside the decoder: with box refinement, a box head per decoder layer (`decoder.bbox_embed`); two-stage,
    also class heads (`decoder.class_embed`), whose extra last pair scores the encoder proposals. The detection
    model's heads are these same modules (tied), so this model alone runs every variant."""

    def __init__(self, config: DeformableDetrConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        channels = self.backbone.conv_encoder.channels
        num_backbone_levels = min(config.num_feature_levels, len(channels))
        self.num_backbone_levels = num_backbone_levels
        self.position_embedding = build_position_encoding(config, sine_offset=-0.5)

        d_model = config.d_model
        input_proj = [
            nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=1), nn.GroupNorm(32, d_model))
            for in_channels in channels[len(channels) - num_backbone_levels:]
        ]
        in_channels = channels[-1]
        for _ in range(config.num_feature_levels - num_backbone_levels):
            input_proj.append(nn.Sequential(
                nn.Conv2d(in_channels, d_model, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d_model)
            ))
            in_channels = d_model
        self.input_proj = nn.ModuleList(input_proj)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, d_model))

        self.encoder = DeformableEncoder(config)
        class_heads = box_heads = None
        if config.with_box_refine:  # (two_stage requires it)
            class_heads, box_heads = _prediction_heads(config, _num_predictions(config))
        self.decoder = DeformableDecoder(
            config, bbox_embed=box_heads, class_embed=class_heads if config.two_stage else None
        )
        if config.two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            # each query: a positional half (-> reference point) and a content half
            self.query_position_embeddings = nn.Embedding(config.num_queries, d_model * 2)
            self.reference_points = nn.Linear(d_model, 2)
        if config.mixed_query_selection:
            self.query_content_embeddings = nn.Embedding(config.num_queries, d_model)
        # training-only parameters: never saved, initialised from their own random stream (training_queries.py)
        width = _one_to_many_width(config)
        self.training_queries = (TrainingQueries(config, embeds_boxes=not config.two_stage, one_to_many_width=width)
                                 if TrainingQueries.wanted(config, width) else None)
        self._keys_to_ignore_on_save = ignored_on_save(self.training_queries)
        self.post_init()

    def _multi_scale_features(self, pixel_values, pixel_mask):
        """The L levels: projected features (B, C, h_l, w_l), masks (B, h_l, w_l) True on valid pixels."""
        features = self.backbone(pixel_values, pixel_mask)[-self.num_backbone_levels:]
        sources = [proj(feature) for proj, (feature, _) in zip(self.input_proj, features)]
        masks = [mask for _, mask in features]
        for level in range(len(sources), self.config.num_feature_levels):
            # the first extra level convolves C5 itself, the next ones the previous extra level
            source = self.input_proj[level](features[-1][0] if level == len(features) else sources[-1])
            sources.append(source)
            masks.append(F.interpolate(pixel_mask[None].to(pixel_values.dtype), size=source.shape[-2:])[0].bool())
        return sources, masks

    @staticmethod
    def _valid_ratio(mask):
        """(B, h, w) -> (B, 2): fraction of each level's width and height that is image, not padding."""
        valid_height = mask[:, :, 0].sum(1).to(torch.float32) / mask.shape[1]
        valid_width = mask[:, 0, :].sum(1).to(torch.float32) / mask.shape[2]
        return torch.stack([valid_width, valid_height], -1)

    def _learned_queries(self, batch_size: int, num_one_to_many: int):
        """One-stage: learned (position, content) pairs, each position giving a reference point."""
        weight = self.query_position_embeddings.weight
        if num_one_to_many:
            weight = torch.cat([weight, self.training_queries.one_to_many.weight])
        query_pos, tgt = weight[None].expand(batch_size, -1, -1).split(self.config.d_model, dim=-1)
        return query_pos, tgt, self.reference_points(query_pos).sigmoid()

    def _two_stage_queries(self, memory, padding_mask, spatial_shapes, num_one_to_many: int = 0):
        """Score a proposal at every encoder pixel with the last class/box heads, keep the top-k as queries (k
        more for the one-to-many branch: top-k is sorted, so the object queries are the same)."""
        object_query, proposals = encoder_output_proposals(memory, padding_mask, spatial_shapes)
        object_query = self.enc_output_norm(self.enc_output(object_query))
        enc_outputs_class = self.decoder.class_embed[-1](object_query)
        enc_outputs_coord_logits = self.decoder.bbox_embed[-1](object_query) + proposals
        num_proposals = self.config.two_stage_num_proposals + num_one_to_many
        if num_proposals > memory.shape[1]:
            raise ValueError(f"two_stage_num_proposals ({num_proposals}) exceeds the {memory.shape[1]} encoder "
                             f"positions of this input size {spatial_shapes}: use larger images or fewer proposals")
        topk = torch.topk(enc_outputs_class[..., 0], num_proposals, dim=1).indices
        topk_coords_logits = torch.gather(enc_outputs_coord_logits, 1, topk[..., None].expand(-1, -1, 4)).detach()
        reference_points = topk_coords_logits.sigmoid()
        query_pos, tgt = self._proposal_queries(topk_coords_logits)
        if self.config.mixed_query_selection:  # DINO: positions from the proposals, content learned
            tgt = self.query_content_embeddings.weight
            if num_one_to_many:
                tgt = torch.cat([tgt, self.training_queries.one_to_many.weight])
            tgt = tgt[None].expand(memory.shape[0], -1, -1)
        return query_pos, tgt, reference_points, enc_outputs_class, enc_outputs_coord_logits

    def _proposal_queries(self, box_logits):
        """Two-stage: a (position, content) pair from the sine embedding of each box."""
        query_embed = self.pos_trans_norm(self.pos_trans(box_position_embedding(box_logits, self.config.d_model // 2)))
        return query_embed.split(self.config.d_model, dim=-1)

    def _denoising_inputs(self, denoising: DenoisingQueries):
        """Denoising queries: content from the noised labels; position and reference from the noised boxes, the
        way this variant's own queries get theirs (two-stage: like a proposal; one-stage: the box's embedding,
        and its centre as the reference point, as a learned query's)."""
        if self.config.two_stage:
            query_pos, _ = self._proposal_queries(inverse_sigmoid(denoising.boxes))
            return query_pos, denoising.content, denoising.boxes
        query_pos = self.training_queries.box_query_position(denoising.boxes)
        return query_pos, denoising.content, denoising.boxes[..., :2]

    @can_return_tuple
    def forward(self, pixel_values, pixel_mask=None, output_attentions=None, output_hidden_states=None,
                labels=None):
        """pixel_values (B, 3, H, W); pixel_mask (B, H, W) 1 on image pixels, 0 on padding (default all 1);
        labels (training only, as the detection model takes them) feed the denoising queries."""
        output_attentions, output_hidden_states = output_flags(self.config, output_attentions, output_hidden_states)
        pixel_mask = check_inputs(pixel_values, pixel_mask, self.config.num_channels)
        batch_size = pixel_values.shape[0]

        sources, masks = self._multi_scale_features(pixel_values, pixel_mask)
        spatial_shapes_list = [tuple(source.shape[-2:]) for source in sources]
        # from each size as its own tensor, not as_tensor(list): an ONNX trace then keeps the sizes symbolic
        spatial_shapes = torch.stack([
            torch.stack([torch.as_tensor(height), torch.as_tensor(width)]) for height, width in spatial_shapes_list
        ]).to(device=pixel_values.device, dtype=torch.long)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self._valid_ratio(mask) for mask in masks], 1).to(sources[0].dtype)

        # flatten the levels into one sequence: (B, S, C), S = sum_l h_l * w_l
        src = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
        pos = torch.cat([
            self.position_embedding(mask, sources[0].dtype).flatten(2).transpose(1, 2) + self.level_embed[level]
            for level, mask in enumerate(masks)
        ], 1)
        padding_mask = ~torch.cat([mask.flatten(1) for mask in masks], 1)
        attention_padding_mask = mask_if_padded(padding_mask)

        memory, encoder_hidden_states, encoder_attentions = self.encoder(
            src, pos, spatial_shapes, level_start_index, valid_ratios, attention_padding_mask,
            output_attentions, output_hidden_states, spatial_shapes_list,
        )

        extra = self.training and labels is not None  # training's extra queries
        num_one_to_many = self.config.num_queries_one_to_many if extra else 0
        enc_outputs_class = enc_outputs_coord_logits = None
        if self.config.two_stage:
            query_pos, tgt, reference_points, enc_outputs_class, enc_outputs_coord_logits = self._two_stage_queries(
                memory, padding_mask, spatial_shapes_list, num_one_to_many
            )
        else:
            query_pos, tgt, reference_points = self._learned_queries(batch_size, num_one_to_many)
        denoising = None
        if extra and self.training_queries is not None:
            denoising = self.training_queries.denoising_queries(labels, self.config)
        if denoising is not None:
            parts = zip(self._denoising_inputs(denoising), (query_pos, tgt, reference_points))
            query_pos, tgt, reference_points = (torch.cat(pair, 1) for pair in parts)
        num_object = self.config.two_stage_num_proposals if self.config.two_stage else self.config.num_queries
        counts = query_counts(num_object, denoising, num_one_to_many)
        self_attention_mask = training_self_attention_mask(counts, denoising, device=tgt.device)

        hidden, references, decoder_hidden_states, decoder_attentions, cross_attentions = self.decoder(
            tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index, valid_ratios,
            attention_padding_mask, output_attentions, output_hidden_states, spatial_shapes_list, self_attention_mask,
        )
        if counts.training_parts() and self.training_queries is not None:
            hidden = hidden + self.training_queries.unused_parameters_term()
        parts = split_training_queries(counts, denoising, intermediate_hidden_states=hidden,
                                       init_reference_points=reference_points, intermediate_reference_points=references)
        return DeformableDetrModelOutput(
            last_hidden_state=parts.object["intermediate_hidden_states"][:, -1],
            **parts.object,
            decoder_hidden_states=decoder_hidden_states,
            decoder_attentions=decoder_attentions,
            cross_attentions=cross_attentions,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attentions=encoder_attentions,
            enc_outputs_class=enc_outputs_class,
            enc_outputs_coord_logits=enc_outputs_coord_logits,
            training_queries=parts.training_parts() or None,
        )


def _one_to_many_width(config) -> int:
    """Width of H-DETR's learned one-to-many queries: a (position, content) pair one-stage, content only with
    mixed query selection; two-stage proposals need none."""
    if not config.num_queries_one_to_many or (config.two_stage and not config.mixed_query_selection):
        return 0
    return config.d_model if config.two_stage else 2 * config.d_model


class DeformableDetrForObjectDetection(DeformableDetrPreTrainedModel):
    """Deformable DETR with per-decoder-layer class and box heads and the focal set loss.

    Without box refinement the heads are shared by all layers (tied to layer 0); with it every layer has its
    own class and box heads, the box head also refining the decoder's reference points; two-stage adds one
    more class/box head pair that scores the encoder's proposals.
    """

    def __init__(self, config: DeformableDetrConfig):
        super().__init__(config)
        self.model = DeformableDetrModel(config)
        num_pred = _num_predictions(config)
        self.class_embed, self.bbox_embed = _prediction_heads(config, num_pred)
        # Tying as transformers 5 declares it ({target: source}); save_pretrained then writes the same keys. With
        # box refinement (one-stage) the class heads stay untied, else save_pretrained would drop the trained
        # heads of layers > 0; a transformers file, which holds only `class_embed.0`, fills them in tie_weights.
        self._tied_weights_keys = {}
        if num_pred > 1:  # (a one-layer decoder has nothing to tie)
            self._tied_weights_keys = {r"bbox_embed.(?![0])\d+": "bbox_embed.0"}
            if not self._separate_class_heads:
                self._tied_weights_keys[r"class_embed.(?![0])\d+"] = "class_embed.0"
        # the base model's refinement / proposal heads are the detection heads (transformers' layout)
        if config.with_box_refine:
            self._tied_weights_keys["bbox_embed"] = "model.decoder.bbox_embed"
        if config.two_stage:
            self._tied_weights_keys["class_embed"] = "model.decoder.class_embed"
        self.post_init()

    @property
    def _separate_class_heads(self) -> bool:
        """The paper gives every decoder layer its own class head when boxes are refined."""
        return self.config.with_box_refine and not self.config.two_stage

    def tie_weights(self, missing_keys: set[str] | None = None, recompute_mapping: bool = True):
        """Besides transformers' tying: a checkpoint written by transformers 5 (which ties the box-refinement class
        heads to layer 0 and so stores only `class_embed.0`) fills each missing class head with a copy of layer
        0's, as transformers' own class reads that file; heads present in the checkpoint are kept."""
        super().tie_weights(missing_keys=missing_keys, recompute_mapping=recompute_mapping)
        if not (self._separate_class_heads and missing_keys):
            return
        for i, head in enumerate(self.class_embed[1:], start=1):
            names = {f"class_embed.{i}.weight", f"class_embed.{i}.bias"}
            if names <= missing_keys and not {"class_embed.0.weight", "class_embed.0.bias"} & missing_keys:
                with torch.no_grad():
                    head.weight.copy_(self.class_embed[0].weight)
                    head.bias.copy_(self.class_embed[0].bias)
                missing_keys -= names

    @can_return_tuple
    def forward(self, pixel_values, pixel_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None):
        """labels: optional list (one per image) of {"class_labels" (T,), "boxes" (T, 4) normalized cxcywh}."""
        if labels is not None:  # before the denoising queries are built from them
            validate_labels(labels, pixel_values.shape[0], self.config.num_labels)
        outputs = self.model(pixel_values, pixel_mask, output_attentions, output_hidden_states, labels=labels,
                             return_dict=True)
        outputs_class, outputs_coord = self._predict(
            outputs.intermediate_hidden_states, outputs.init_reference_points, outputs.intermediate_reference_points)
        logits, pred_boxes = outputs_class[-1], outputs_coord[-1]

        loss = loss_dict = auxiliary_outputs = None
        if self.config.auxiliary_loss:
            auxiliary_outputs = _auxiliary(outputs_class, outputs_coord)
        if labels is not None:
            predictions = {"logits": logits, "pred_boxes": pred_boxes, "auxiliary_outputs": auxiliary_outputs}
            if self.config.two_stage:
                predictions["enc_outputs"] = {
                    "logits": outputs.enc_outputs_class,
                    "pred_boxes": outputs.enc_outputs_coord_logits.sigmoid(),
                }
            for part, decoded in (outputs.training_queries or {}).items():
                predictions[part] = self._part_predictions(decoded)
            criterion = SetCriterion.from_config(self.config, use_focal_loss=True)
            loss, loss_dict = compute_set_loss(criterion, predictions, labels)

        return DeformableDetrObjectDetectionOutput(
            loss=loss, loss_dict=loss_dict, logits=logits, pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs, **outputs,
        )

    def _predict(self, hidden, init_reference_points, intermediate_reference_points):
        """Each decoder layer's class logits and boxes, the boxes relative to the reference points the layer
        attended with (2-d points in the one-stage model's first layer, boxes once refined)."""
        outputs_class, outputs_coord = [], []
        for layer in range(hidden.shape[1]):
            reference = init_reference_points if layer == 0 else intermediate_reference_points[:, layer - 1]
            reference = inverse_sigmoid(reference)
            delta = self.bbox_embed[layer](hidden[:, layer])
            if reference.shape[-1] == 4:
                coord_logits = delta + reference
            else:
                coord_logits = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            outputs_class.append(self.class_embed[layer](hidden[:, layer]))
            outputs_coord.append(coord_logits.sigmoid())
        return outputs_class, outputs_coord

    def _part_predictions(self, decoded: dict) -> dict:
        """The set loss's view of one part of training's extra queries (denoising, one-to-many)."""
        outputs_class, outputs_coord = self._predict(
            decoded["intermediate_hidden_states"], decoded["init_reference_points"],
            decoded["intermediate_reference_points"])
        auxiliary = _auxiliary(outputs_class, outputs_coord) if self.config.auxiliary_loss else None
        return {"logits": outputs_class[-1], "pred_boxes": outputs_coord[-1], "auxiliary_outputs": auxiliary,
                **decoded.get("layout", {})}


def _auxiliary(outputs_class, outputs_coord) -> list[dict]:
    return [{"logits": c, "pred_boxes": b} for c, b in zip(outputs_class[:-1], outputs_coord[:-1])]


__all__ = ["DeformableDetrForObjectDetection", "DeformableDetrModel", "DeformableDetrPreTrainedModel"]

"""Panoptic / instance segmentation on top of DETR and Deformable DETR (DETR paper, section 4.4).

Each model holds the unchanged detector as `detr` and adds `bbox_attention` (a multi-head attention map of every
decoder output over one level of the encoder memory) and `mask_head` (an FPN-like convolutional head over the
backbone's C2-C4) giving one mask logit map per query at 1/4 resolution. The names are those of transformers'
`DetrForSegmentation` checkpoints, which load with no missing or unexpected weights.

The detector runs its own forward untouched; the backbone stages the head needs (C2-C5) are kept from that same
forward by hooks on the timm stage modules, so the backbone runs once and no detector code is repeated here.

Deformable DETR's memory has several levels. The attention map reads the stride-16 (C4) level: every level of
the deformable encoder has already mixed information from all levels, so the finer level gives 4x more
attention pixels than the stride-32 one for a small cost (Q x heads x h/16 x w/16), and the FPN steps then fuse
C4 (same resolution), C3 and C2 exactly as in DETR. Single-scale models, whose only level is C5, read that one.
The backbone must return C3-C5 as usual; C2 is taken from its stage module even when it is not one of the
detector's levels (the shipped checkpoints use C3-C5).

Training (`labels` with "masks"): the detector's set losses as they are, plus sigmoid focal and DICE losses
on the matched queries' masks (`mask_loss.py`). `config.freeze_detector` (the paper's second step) freezes the
whole detector and runs it without autograd; only the attention map and the mask head learn.
`config.train_matched_masks_only` (a training-speed option, off by default): in training with labels the head runs
for the matched queries only, the only ones the mask losses read; the losses are the same, and `pred_masks` is
then None.
"""

import contextlib
import copy
import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import initialization as init
from transformers.utils import ModelOutput

from .detr_base import check_inputs
from .loss import SetCriterion
from .mask_head import MaskHeadSmallConv, MHAttentionMap
from .mask_loss import mask_losses, matched_predictions, validate_masks
from .modeling_deformable_detr import DeformableDetrForObjectDetection, DeformableDetrPreTrainedModel
from .modeling_detr import DetrForObjectDetection, DetrPreTrainedModel


@dataclass
class DetrSegmentationOutput(ModelOutput):
    """
    loss, loss_dict: the detector's set losses plus "loss_mask" (focal) and "loss_dice" (when `labels` are given).
    logits (B, Q, classes), pred_boxes (B, Q, 4): the detector's.
    pred_masks (B, Q, H/4, W/4): mask logits of every query at 1/4 of the (padded) input resolution.
    auxiliary_outputs, hidden states, attentions: the detector's.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DeformableDetrSegmentationOutput(DetrSegmentationOutput):
    """DetrSegmentationOutput plus Deformable DETR's reference points and two-stage proposals."""

    init_reference_points: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None


@dataclass
class MaskHeadInputs:
    """What the attention map and the mask head read from one detector forward. With the detector frozen (and
    the images fixed) these never change, so training can compute them once per image (training/segmentation.py).

    queries (B, Q, D): the decoder's last outputs; memory (B, D, h, w): the encoder memory level the attention map
    reads; valid (B, h, w): True on image pixels; features (B, D, h, w): that level's encoder input; fpn [C4, C3,
    C2]: the backbone maps the FPN steps add.
    """

    queries: torch.Tensor
    memory: torch.Tensor
    valid: torch.Tensor
    features: torch.Tensor
    fpn: list[torch.Tensor]

    def select(self, queries: torch.Tensor) -> "MaskHeadInputs":
        return MaskHeadInputs(queries, self.memory, self.valid, self.features, self.fpn)


class StageTap:
    """Keeps the outputs of chosen timm backbone stages while the detector runs (forward hooks on the stage
    modules), so the mask head reads the very maps the detector computed."""

    def __init__(self, backbone, stage_indices: list[int]):
        info = backbone.model.feature_info.info  # every stage timm knows, not only the returned ones
        modules = dict(backbone.model.named_modules())
        self.channels = []
        self._outputs = None  # a dict only while recording
        for index in stage_indices:
            if not 0 <= index < len(info):
                raise ValueError(f"the mask head needs backbone stage {index}, but {type(backbone.model).__name__} "
                                 f"has stages 0-{len(info) - 1}")
            name = info[index]["module"]
            module = modules.get(name, modules.get(name.replace(".", "_")))  # FeatureListNet flattens dots
            if module is None:
                raise ValueError(f"backbone stage {index} ({name!r}) is not among the modules timm built; the "
                                 "mask head needs it: include it in backbone_out_indices")
            # a bound method (not a closure), so a deep copy of the model hooks its own copy of the tap
            module.register_forward_hook(functools.partial(self._keep, index))
            self.channels.append(info[index]["num_chs"])
        self.stage_indices = list(stage_indices)

    def _keep(self, index, module, args, output):
        if self._outputs is not None:
            self._outputs[index] = output

    @contextlib.contextmanager
    def recording(self):
        """Yields a list filled, once the block's forward has run, with the stages' maps in `stage_indices` order."""
        self._outputs, maps = {}, []
        try:
            yield maps
            missing = [i for i in self.stage_indices if i not in self._outputs]
            if missing:
                raise RuntimeError(f"backbone stages {missing} did not run in the detector's forward")
            for index, channels in zip(self.stage_indices, self.channels):
                stage = self._outputs[index]
                # channels-last (NHWC) stage outputs, as in hierarchical transformers: to (B, C, h, w)
                maps.append(stage.permute(0, 3, 1, 2) if stage.shape[1] != channels else stage)
        finally:
            self._outputs = None  # drop the references: the maps belong to this forward only


def _valid_at(pixel_mask: torch.Tensor, size) -> torch.Tensor:
    """(B, H, W) pixel mask -> (B, h, w) bool, True on image pixels, resized as the backbone resizes it."""
    return F.interpolate(pixel_mask[None].float(), size=size)[0].to(torch.bool)


def _num_boxes(labels: list[dict], device) -> float:
    """Target count per process, averaged over processes (as the set loss normalizes), at least 1."""
    count = torch.as_tensor([float(sum(len(t["class_labels"]) for t in labels))], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count /= torch.distributed.get_world_size()
    return count.clamp(min=1).item()


def _init_head_weights(module):
    """The official inits: xavier attention projections, kaiming-uniform (a=1) mask head convolutions."""
    if isinstance(module, MHAttentionMap):
        for linear in (module.q_linear, module.k_linear):
            init.xavier_uniform_(linear.weight)
            init.zeros_(linear.bias)
    elif isinstance(module, MaskHeadSmallConv):
        for conv in module.modules():
            if isinstance(conv, torch.nn.Conv2d):
                init.kaiming_uniform_(conv.weight, a=1)
                init.zeros_(conv.bias)
        # The attention maps, the head's only per-query input, sum to 1 over heads x pixels, so each value is
        # ~1 / (heads x pixels) beside GroupNorm'd features of ~1: at the official scale their weights need
        # thousands of steps to tell one query's mask from another's. Start them as if each head's share of a
        # map fell on a 4 x 4 patch (the weights of trained checkpoints load over this).
        if module.num_maps > 0:
            scaled = module.lay1.weight.clone()
            scaled[:, -module.num_maps:] *= 16 * module.num_maps
            init.copy_(module.lay1.weight, scaled)  # like the init functions, leaves loaded weights alone


class _SegmentationHead:
    """What DetrForSegmentation and DeformableDetrForSegmentation share: building the head around `self.detr`,
    freezing, loading a detector, the forward (detector, head inputs, masks), the mask losses and the output. Each
    class says where its head inputs come from (`_head_inputs`)."""

    detector_class = None  # the detection model class `self.detr` is
    output_class = DetrSegmentationOutput
    uses_focal_loss = False
    model_card_template = "detr_segmentation"  # model_cards/<name>.md

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # the detector base's, next in the MRO
        _init_head_weights(module)

    def _build_head(self, config, stage_indices: list[int]):
        backbone = self.detr.model.backbone.conv_encoder
        self.stage_tap = StageTap(backbone, stage_indices)
        heads = config.encoder_attention_heads
        channels = dict(zip(stage_indices, self.stage_tap.channels))
        fpn_dims = [channels[i] for i in stage_indices[:3][::-1]]  # C4, C3, C2
        self.bbox_attention = MHAttentionMap(config.d_model, config.d_model, heads)
        self.mask_head = MaskHeadSmallConv(config.d_model + heads, fpn_dims, config.d_model)
        self.set_detector_frozen(bool(getattr(config, "freeze_detector", False)))

    def set_detector_frozen(self, frozen: bool = True):
        """The paper's second step: the detector (backbone included) stops learning; `config.freeze_detector`
        records it, so a saved model reloads the same way. Unfreezing restores the backbone's own stage freezing."""
        self.config.freeze_detector = frozen
        self.detr.requires_grad_(not frozen)
        self.train(self.training)
        if not frozen:
            self.detr.model.backbone.conv_encoder.freeze_early_stages(self.config.backbone_trainable_stages)

    @property
    def detector_frozen(self) -> bool:
        return bool(getattr(self.config, "freeze_detector", False))

    def train(self, mode: bool = True):
        """A frozen detector stays in eval mode: dropout off, and BatchNorm (when not frozen by the config) keeps
        its running statistics instead of updating them from the mask head's batches."""
        super().train(mode)
        if self.detector_frozen:
            self.detr.eval()
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.detector_frozen:  # loading makes fresh, trainable Parameters
            model.set_detector_frozen(True)
        return loaded

    @classmethod
    def from_detector(cls, detector, **config_overrides):
        """The segmentation model around a trained detector (an instance, or a folder / Hub id of one), with a
        freshly initialised attention map and mask head; `config_overrides` set config fields (freeze_detector)."""
        if isinstance(detector, (str, os.PathLike)):
            detector = cls.detector_class.from_pretrained(detector)
        if not isinstance(detector, cls.detector_class):
            raise TypeError(f"{cls.__name__}.from_detector needs a {cls.detector_class.__name__}, got "
                            f"{type(detector).__name__}")
        config = copy.deepcopy(detector.config)
        for name, value in config_overrides.items():
            setattr(config, name, value)
        config.architectures = [cls.__name__]
        model = cls(config)
        model.detr.load_state_dict(detector.state_dict())
        return model

    def _run_detector(self, pixel_values, pixel_mask, labels, output_attentions, output_hidden_states):
        """The detector's forward (its losses when labels are given) and the stage maps kept from it."""
        frozen = self.detector_frozen
        with self.stage_tap.recording() as stages, torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            detection = self.detr(pixel_values, pixel_mask, labels=labels, output_attentions=output_attentions,
                                  output_hidden_states=output_hidden_states, return_dict=True)
        return detection, stages

    def forward(self, pixel_values, pixel_mask=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """pixel_values (B, 3, H, W), pixel_mask (B, H, W) 1 on image pixels; labels as the class docstring says."""
        detection, inputs = self.detect(pixel_values, pixel_mask, labels, output_attentions, output_hidden_states)
        return self._masks_and_output(detection, inputs, labels, return_dict)

    def detect(self, pixel_values, pixel_mask=None, labels=None, output_attentions=None, output_hidden_states=None):
        """The detector's forward (its losses when labels are given) and the head's inputs from it."""
        pixel_mask = check_inputs(pixel_values, pixel_mask, self.config.num_channels)
        detection, stage_maps = self._run_detector(pixel_values, pixel_mask, labels, output_attentions,
                                                   output_hidden_states)
        return detection, self._head_inputs(detection, stage_maps, pixel_mask)

    def predict_masks(self, inputs: MaskHeadInputs) -> torch.Tensor:
        """The attention map and mask head on `inputs`: (B, Q, H/4, W/4) mask logits of every query."""
        attention_maps = self.bbox_attention(inputs.queries, inputs.memory, padding_mask=~inputs.valid)
        masks = self.mask_head(inputs.features, attention_maps, inputs.fpn)
        return masks.view(inputs.queries.shape[0], inputs.queries.shape[1], *masks.shape[-2:])

    def _matched_masks(self, inputs: MaskHeadInputs, indices):
        """Masks of the matched queries only, (N, H/4, W/4) in the order of `indices`: the mask losses read no
        other query, so a training step need not run the head for the rest (Q is 100-300, N the object count)."""
        queries = inputs.queries
        counts = [len(src) for src, _ in indices]
        selected = torch.zeros(len(indices), max(1, *counts), dtype=torch.long, device=queries.device)
        for image, (src, _) in enumerate(indices):
            selected[image, :len(src)] = src.to(queries.device)
        subset = queries.gather(1, selected[..., None].expand(-1, -1, queries.shape[-1]))
        masks = self.predict_masks(inputs.select(subset))  # (B, max count, h, w)
        return torch.cat([masks[image, :count] for image, count in enumerate(counts)])

    def match(self, detection, labels) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The Hungarian matching of the detector's predictions to `labels`, per image (query indices, target
        indices): the one its criterion computed for the set losses (matching is deterministic)."""
        device = detection.logits.device
        targets = [{**t, "class_labels": t["class_labels"].to(device), "boxes": t["boxes"].to(device)}
                   for t in labels]
        criterion = SetCriterion.from_config(self.config, use_focal_loss=self.uses_focal_loss)
        return criterion.matcher({"logits": detection.logits, "pred_boxes": detection.pred_boxes}, targets)

    def mask_loss(self, matched, labels, indices) -> tuple[torch.Tensor, dict]:
        """The weighted mask loss of the matched queries' masks (N, H/4, W/4) and its terms {"loss_mask",
        "loss_dice"} (unweighted)."""
        terms = mask_losses(matched, labels, indices, _num_boxes(labels, matched.device))
        loss = (self.config.mask_loss_coefficient * terms["loss_mask"]
                + self.config.dice_loss_coefficient * terms["loss_dice"])
        return loss, terms

    def _masks_and_output(self, detection, inputs: MaskHeadInputs, labels, return_dict):
        """The masks (all queries', or with `train_matched_masks_only` in training the matched ones'), the mask
        losses when labels are given, and the output."""
        loss, loss_dict = detection.loss, detection.loss_dict
        pred_masks = indices = None
        if labels is not None:
            validate_masks(labels)
            indices = self.match(detection, labels)
        if indices is not None and self.training and getattr(self.config, "train_matched_masks_only", False):
            matched = self._matched_masks(inputs, indices)
        else:
            pred_masks = self.predict_masks(inputs)
            matched = None if indices is None else matched_predictions(pred_masks, indices)
        if indices is not None:
            mask_loss, terms = self.mask_loss(matched, labels, indices)
            loss, loss_dict = loss + mask_loss, {**loss_dict, **terms}
        fields = {k: v for k, v in detection.items() if k in self.output_class.__dataclass_fields__}
        result = self.output_class(**{**fields, "loss": loss, "loss_dict": loss_dict, "pred_masks": pred_masks})
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # register_for_auto_class records one Auto class; the pipeline's universal-segmentation path needs both
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoModelForUniversalSegmentation"] = f"{self.__module__.split('.')[-1]}.{type(self).__name__}"
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)


def _returned_stages(detr) -> list[int]:
    """Indices (in timm's full feature_info) of the stages the detector's backbone returns."""
    backbone = detr.model.backbone.conv_encoder
    return list(getattr(backbone, "out_indices", None) or backbone.model.feature_info.out_indices)


def _stage_indices(detr) -> list[int]:
    """Indices (in timm's feature_info) of C2, C3, C4, C5: the three stages before the detector's last one."""
    last = _returned_stages(detr)[-1]
    if last < 3:
        raise ValueError(f"the mask head needs three backbone stages before the last one (C2-C4 before C5); the "
                         f"detector's last stage is timm stage {last}")
    return [last - 3, last - 2, last - 1, last]


class DetrForSegmentation(_SegmentationHead, DetrPreTrainedModel):
    """DETR + attention map over the (stride-32) encoder memory + FPN mask head on C2-C4 (DETR paper, 4.4).

    labels: optional list (one per image) of {"class_labels" (T,), "boxes" (T, 4) normalized cxcywh,
    "masks" (T, H, W) at the padded input size}."""

    detector_class = DetrForObjectDetection

    def __init__(self, config):
        super().__init__(config)
        self.detr = DetrForObjectDetection(config)
        self._build_head(config, _stage_indices(self.detr))
        self.post_init()

    def _head_inputs(self, detection, stage_maps, pixel_mask) -> MaskHeadInputs:
        c2, c3, c4, c5 = stage_maps
        batch_size, height, width = c5.shape[0], *c5.shape[-2:]
        memory = detection.encoder_last_hidden_state.transpose(1, 2).reshape(batch_size, -1, height, width)
        features = self.detr.model.input_projection(c5)  # the encoder's input, as the official head reads it
        return MaskHeadInputs(detection.last_hidden_state, memory, _valid_at(pixel_mask, (height, width)), features,
                              [c4, c3, c2])


class DeformableDetrForSegmentation(_SegmentationHead, DeformableDetrPreTrainedModel):
    """Deformable DETR + the same head; the attention map reads the stride-16 (C4) memory level (see the module
    docstring), the C5 one for single-scale models. labels as DetrForSegmentation's."""

    detector_class = DeformableDetrForObjectDetection
    output_class = DeformableDetrSegmentationOutput
    uses_focal_loss = True

    def __init__(self, config):
        super().__init__(config)
        self.detr = DeformableDetrForObjectDetection(config)
        stages = _stage_indices(self.detr)
        out_indices = _returned_stages(self.detr)
        # the backbone stages that are memory levels, in level order: the last ones returned
        self.level_stages = out_indices[len(out_indices) - min(config.num_feature_levels, len(out_indices)):]
        self.feature_stage = stages[2] if stages[2] in self.level_stages else stages[3]
        if any(stage not in stages for stage in self.level_stages[:self.level_stages.index(self.feature_stage)]):
            raise ValueError(f"memory levels {self.level_stages} start below C2; the mask head cannot locate its level")
        self._build_head(config, stages)
        self.post_init()

    def _head_inputs(self, detection, stage_maps, pixel_mask) -> MaskHeadInputs:
        by_stage = dict(zip(self.stage_tap.stage_indices, stage_maps))
        level = self.level_stages.index(self.feature_stage)
        # the memory is the levels' pixels concatenated in level order: skip the finer levels before ours
        start = sum(by_stage[s].shape[-2] * by_stage[s].shape[-1] for s in self.level_stages[:level])
        stage = by_stage[self.feature_stage]
        batch_size, height, width = stage.shape[0], *stage.shape[-2:]
        memory = detection.encoder_last_hidden_state[:, start:start + height * width]
        memory = memory.transpose(1, 2).reshape(batch_size, -1, height, width)
        features = self.detr.model.input_proj[level](stage)  # the level's encoder input, as DETR's head reads
        c2, c3, c4 = stage_maps[:3]
        return MaskHeadInputs(detection.last_hidden_state, memory, _valid_at(pixel_mask, (height, width)), features,
                              [c4, c3, c2])


__all__ = [
    "DeformableDetrForSegmentation",
    "MaskHeadInputs",
    "DeformableDetrSegmentationOutput",
    "DetrForSegmentation",
    "DetrSegmentationOutput",
]

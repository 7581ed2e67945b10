"""DETR: backbone -> transformer encoder-decoder -> class and box heads (Carion et al., 2020).

Sub-module names equal the on-disk weight names of transformers' `DetrForObjectDetection` checkpoints
(`model.backbone.conv_encoder.model.*`, `self_attn.out_proj`, `layers.N.fc1`, ...): transformers' v5 key renames
for its own "DetrModel" are not applied to custom-code classes, so identical names make transformers checkpoints,
our own save/load round trip and the trust_remote_code load all plain state-dict loads.
"""

import tempfile
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone import Backbone, ConvEncoder, no_pretrained_backbone_download
from .configuration_detr import DetrConfig
from .detr_transformer import Decoder, Encoder, MultiheadAttention
from .loss import SetCriterion, compute_set_loss
from .model_card import write_model_card
from .position_encoding import PositionEmbeddingLearned, build_position_encoding


@dataclass
class DetrModelOutput(ModelOutput):
    """
    last_hidden_state (B, Q, D): normalized output of the last decoder layer.
    intermediate_hidden_states (L, B, Q, D): every decoder layer's normalized output (when `auxiliary_loss`).
    encoder_last_hidden_state (B, HW, D): encoder memory. Hidden states / attentions: tuples, on request.
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DetrObjectDetectionOutput(ModelOutput):
    """
    loss: weighted sum of the set losses (when `labels` are given); loss_dict: the unweighted terms.
    logits (B, Q, num_labels + 1): class scores, the last one "no object".
    pred_boxes (B, Q, 4): normalized (cx, cy, w, h) relative to each image's unpadded size.
    auxiliary_outputs: [{"logits", "pred_boxes"}] of decoder layers 1..L-1 (with `auxiliary_loss` and labels).
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


class MLP(nn.Module):
    """Feed-forward head: `num_layers` linears with ReLU in between (the paper's 3-layer box FFN)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else layer(x).relu()
        return x


def _return(output: ModelOutput, return_dict: bool | None, config):
    return_dict = config.return_dict if return_dict is None else return_dict
    return output if return_dict else output.to_tuple()


class DetrPreTrainedModel(PreTrainedModel):
    config_class = DetrConfig
    config: DetrConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ConvEncoder", "EncoderLayer", "DecoderLayer"]
    # Hub checkpoints carry BatchNorm counters that frozen BatchNorm does not keep
    _keys_to_ignore_on_load_unexpected = [r"num_batches_tracked"]
    model_card_template = "detr"  # model_cards/<name>.md

    def _initialize_weights(self, module, is_custom_code=False):
        # For custom code transformers skips modules without parameters of their own (the attention modules,
        # the detection models), whose _init_weights sets their children (xavier attention, paper head inits).
        # Every init here goes through transformers.initialization, which leaves loaded weights alone.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # normal(init_std) linears/convs, unit LayerNorms, normal embeddings
        if isinstance(module, MultiheadAttention):
            for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(proj.weight, gain=self.config.init_xavier_std)
                init.zeros_(proj.bias)
        elif isinstance(module, PositionEmbeddingLearned):
            init.uniform_(module.row_embeddings.weight)
            init.uniform_(module.column_embeddings.weight)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        with no_pretrained_backbone_download():  # the checkpoint's weights replace timm's anyway
            loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        # Loading materialises fresh Parameters (requires_grad=True), undoing the freezing done at construction.
        for module in model.modules():
            if isinstance(module, Backbone):
                module.freeze_early_stages(model.config.backbone_trainable_stages)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(self, save_directory, self.model_card_template)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token=None, revision: str | None = None, create_pr: bool = False,
                    max_shard_size="50GB", commit_description: str | None = None, **kwargs):
        """Upload exactly what `save_pretrained` writes (weights, config, code, model card) in one commit."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )


def _check_inputs(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, num_channels: int):
    if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels, the config expects {num_channels}")
    if pixel_mask is not None and pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[2:]):
        raise ValueError(
            f"pixel_mask has shape {tuple(pixel_mask.shape)}, expected (batch, height, width) = "
            f"{(pixel_values.shape[0], *pixel_values.shape[2:])}"
        )


class DetrModel(DetrPreTrainedModel):
    """Backbone + transformer, without heads: returns the decoder's per-query embeddings."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.backbone = ConvEncoder(Backbone.from_config(config))
        # the backbone keeps timm's initialization (or its ImageNet weights): mark it so post_init skips it
        for module in self.backbone.modules():
            module._is_hf_initialized = True
        self.position_embedding = build_position_encoding(config)
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.input_projection = nn.Conv2d(self.backbone.conv_encoder.channels[-1], config.d_model, kernel_size=1)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.post_init()

    def freeze_backbone(self):
        self.backbone.requires_grad_(False)

    def unfreeze_backbone(self):
        self.backbone.requires_grad_(True)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DetrModelOutput | tuple:
        """pixel_values (B, 3, H, W); pixel_mask (B, H, W), 1 on real pixels and 0 on padding (default: all real)."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        _check_inputs(pixel_values, pixel_mask, self.config.num_channels)
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones((batch_size, height, width), dtype=torch.bool, device=pixel_values.device)

        feature_map, mask = self.backbone(pixel_values, pixel_mask)[-1]  # C5: (B, C, h, w), (B, h, w)
        pos = self.position_embedding(mask, dtype=pixel_values.dtype).flatten(2).transpose(1, 2)  # (B, hw, D)
        src = self.input_projection(feature_map).flatten(2).transpose(1, 2)  # (B, hw, D)
        # without padding every key is valid: no mask lets SDPA pick its fastest kernel
        key_padding_mask = None if bool(mask.all()) else mask.flatten(1)

        memory, encoder_hidden_states, encoder_attentions = self.encoder(
            src, pos, key_padding_mask, output_attentions, output_hidden_states
        )
        query_pos = self.query_position_embeddings.weight[None].expand(batch_size, -1, -1)
        output, intermediate, decoder_hidden_states, decoder_attentions, cross_attentions = self.decoder(
            torch.zeros_like(query_pos),
            memory,
            pos,
            query_pos,
            key_padding_mask,
            return_intermediate=self.config.auxiliary_loss,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        result = DetrModelOutput(
            last_hidden_state=output,
            intermediate_hidden_states=intermediate,
            decoder_hidden_states=decoder_hidden_states,
            decoder_attentions=decoder_attentions,
            cross_attentions=cross_attentions,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attentions=encoder_attentions,
        )
        return _return(result, return_dict, self.config)


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

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DetrObjectDetectionOutput | tuple:
        outputs = self.model(pixel_values, pixel_mask, output_attentions, output_hidden_states, return_dict=True)
        logits, pred_boxes = self._heads(outputs.last_hidden_state)

        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            predictions = {"logits": logits, "pred_boxes": pred_boxes}
            if self.config.auxiliary_loss:
                aux_logits, aux_boxes = self._heads(outputs.intermediate_hidden_states[:-1])
                auxiliary_outputs = [{"logits": c, "pred_boxes": b} for c, b in zip(aux_logits, aux_boxes)]
                predictions["auxiliary_outputs"] = auxiliary_outputs
            loss, loss_dict = compute_set_loss(SetCriterion.from_config(self.config), predictions, labels)

        result = DetrObjectDetectionOutput(
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
        )
        return _return(result, return_dict, self.config)


__all__ = [
    "DetrPreTrainedModel",
    "DetrModel",
    "DetrForObjectDetection",
    "DetrModelOutput",
    "DetrObjectDetectionOutput",
    "MLP",
]

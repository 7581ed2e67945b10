"""What DETR and Deformable DETR share as models: the pretrained-model base (loading, saving, freezing, init of the
shared blocks, gradient checkpointing), the backbone set-up, input checks, pixel masks, the attention mask rule,
output flags, the box MLP.
Both model files compose these; neither imports the other."""

import tempfile

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .backbone import Backbone, ConvEncoder, no_pretrained_backbone_download
from .multihead_attention import MultiheadAttention
from .model_card import write_model_card
from .position_encoding import PositionEmbeddingLearned


class MLP(nn.Module):
    """Feed-forward head: `num_layers` linears with ReLU in between (the papers' 3-layer box FFN)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else layer(x).relu()
        return x


def build_backbone(config) -> ConvEncoder:
    """The timm backbone under transformers' checkpoint path (`backbone.conv_encoder.model.*`), marked so
    post_init keeps timm's initialisation (or its ImageNet weights)."""
    backbone = ConvEncoder(Backbone.from_config(config))
    for module in backbone.modules():
        module._is_hf_initialized = True
    return backbone


def check_inputs(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, num_channels: int) -> torch.Tensor:
    """Raise a ValueError naming the problem; return the pixel mask (B, H, W) as bool, True on image pixels
    (all True when none is given)."""
    if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels, the config expects {num_channels}")
    batch_size, _, height, width = pixel_values.shape
    if pixel_mask is None:
        return torch.ones((batch_size, height, width), dtype=torch.bool, device=pixel_values.device)
    if pixel_mask.shape != (batch_size, height, width):
        raise ValueError(
            f"pixel_mask has shape {tuple(pixel_mask.shape)}, expected (batch, height, width) = "
            f"{(batch_size, height, width)}"
        )
    return pixel_mask.bool()


def capturing_graph() -> bool:
    """True while a graph is recorded rather than run: torch.jit.trace (the TorchScript ONNX export),
    torch.export (and the dynamo ONNX export built on it) or torch.compile."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def mask_if_padded(mask: torch.Tensor, padding: bool = True) -> torch.Tensor | None:
    """The attention mask rule of every detrkit model: `mask` as it is, or None when none of its entries is
    `padding` (True in a padding mask, False in a mask of valid positions), i.e. one image or images of one size.
    Without a mask attention may take its fastest kernel and keeps no masked copy of its values and their gradient.
    A recorded graph (`capturing_graph`) always keeps the mask: the test depends on the data, and the graph must
    serve padded inputs too."""
    if capturing_graph():
        return mask
    padded = mask.any() if padding else not mask.all()
    return mask if bool(padded) else None


def output_flags(config, output_attentions: bool | None, output_hidden_states: bool | None) -> tuple[bool, bool]:
    """The call's flags, else the config's."""
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
    )


class DetrFamilyPreTrainedModel(PreTrainedModel):
    """The base of every detrkit model: loading without backbone downloads (freezing reapplied), a model card on
    save, push_to_hub of exactly what save writes, backbone freezing, the shared blocks' initialisation and
    transformers' gradient checkpointing of the encoder and decoder layers."""

    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # Hub checkpoints carry BatchNorm counters that frozen BatchNorm does not keep
    _keys_to_ignore_on_load_unexpected = [r"num_batches_tracked"]
    # training-only parameters (training_queries.py) are never saved: a loaded model starts them afresh
    _keys_to_ignore_on_load_missing = [r"(^|\.)training_queries\."]
    model_card_template = "detr"  # model_cards/<name>.md

    def _initialize_weights(self, module, is_custom_code=False):
        # For custom code transformers skips modules without parameters of their own (the attention modules,
        # the detection models), whose _init_weights sets their children (xavier attention, paper head inits).
        # Every init here goes through transformers.initialization, which leaves loaded weights alone.
        stream = getattr(module, "training_only_stream", None)
        if stream is None:
            return super()._initialize_weights(module, is_custom_code=False)
        # training-only modules (training_queries.py) draw from their own stream, the global one left untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 1 + stream)
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

    def freeze_backbone(self):
        self.base_model.backbone.requires_grad_(False)

    def unfreeze_backbone(self):
        """Make the whole backbone trainable (also the stages `backbone_trainable_stages` froze)."""
        self.base_model.backbone.requires_grad_(True)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        with no_pretrained_backbone_download():  # the checkpoint's weights replace timm's anyway
            loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        for module in model.modules():
            if isinstance(module, Backbone):
                module.after_loading(model.config.backbone_trainable_stages)
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


__all__ = ["DetrFamilyPreTrainedModel", "MLP", "build_backbone", "capturing_graph", "check_inputs", "mask_if_padded",
           "output_flags"]

"""`--model` -> a detector, its image processor, and the backbone policy that fits how it was initialised.

`--model` is a detrkit preset name (random weights, built from a config), a local `save_pretrained` folder, or a
Hub id (detrkit's or transformers' own DETR / Deformable DETR checkpoints). Fine-tuning on other classes
replaces only the class head: everything else must load from the checkpoint, and a load that re-initialises
anything else is an error, not a warning lost in the log.

Backbone policy. A pretrained ResNet keeps frozen BatchNorm (its statistics are real, batches of 2-8 images
would make batch statistics noise) and a frozen stem + C2, as the papers do. A random backbone must not: its
"statistics" are the init values and a frozen random stem is a fixed random projection. So "auto" picks
"pretrained" for checkpoints and `use_pretrained_backbone=True`, "scratch" (plain BatchNorm, everything
trainable) otherwise, and says which.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

import torch

from detrkit.inference.loading import looks_like_path
from detrkit.inference.model_folder import check_weights_file, default_processor, has_processor

from .config import TrainConfig, load_config_file, repo_path
from .load_report import hold_load_report
from .recipes import recipe_overrides

if TYPE_CHECKING:
    from detrkit.families import ModelFamily

HEAD_KEYS = ("class_embed", "class_labels_classifier")  # detrkit / transformers names of the class head


def _modeling():
    from detrkit import modeling

    return modeling


def family_of_type(model_type: str) -> ModelFamily:
    from detrkit.families import family_of

    return family_of(model_type)


def preset_config(name: str, **overrides):
    """A detrkit config from a preset name (e.g. "deformable-detr", "detr-resnet50")."""
    presets = getattr(_modeling(), "presets", None)
    if presets is None:
        from detrkit.modeling import presets
    return presets.config_from_preset(name, **overrides)


def preset_names() -> list[str]:
    try:
        from detrkit.modeling import presets
    except ImportError:
        return []
    return sorted(getattr(presets, "PRESETS", {}))


@dataclass
class LoadedModel:
    """What `--model` resolved to; `adapt_to_labels` builds the detector for the data's classes."""

    family: ModelFamily
    source: str  # human-readable origin, e.g. "preset deformable-detr (random weights)"
    processor: object
    backbone_note: str = ""
    build: Callable = field(default=None, repr=False)
    pretrained: bool = True  # weights (at least the backbone's) learned, not random
    processor_size: dict | None = None  # the checkpoint processor's own size, before `size_processor`
    hub_id: str | None = None  # the Hub repository it came from, for the card's base_model
    recipe_note: str = ""  # which config fields --recipe set (recipes.py)

    def adapt_to_labels(self, id2label: dict, log=print) -> torch.nn.Module:
        return self.build({int(k): v for k, v in id2label.items()}, log)

    def size_processor(self, config: TrainConfig) -> None:
        """Size the processor for this run's images (config.image_size / max_size, resolved by then)."""
        self.processor = make_processor(self.family, config, self.processor)


def resolve_policy(policy: str, pretrained: bool) -> str:
    if policy not in ("auto", "pretrained", "scratch"):
        raise ValueError(f"backbone_policy must be 'auto', 'pretrained' or 'scratch', got {policy!r}")
    return ("pretrained" if pretrained else "scratch") if policy == "auto" else policy


def policy_overrides(policy: str) -> dict:
    return {"freeze_backbone_batch_norm": policy == "pretrained"}


def apply_backbone_policy(model: torch.nn.Module, policy: str) -> str:
    """For "scratch", make every backbone parameter trainable (the config's stage freezing is for pretrained
    stems); returns a one-line description of what was done."""
    backbone = [(n, p) for n, p in model.named_parameters() if "backbone" in n]
    if policy == "scratch":
        for _, p in backbone:
            p.requires_grad_(True)
        return "scratch: trainable BatchNorm, no backbone layer frozen (random backbone)"
    frozen = sum(not p.requires_grad for _, p in backbone)
    return f"pretrained: frozen BatchNorm, {frozen}/{len(backbone)} backbone tensors frozen (stem and early stages)"


def label_kwargs(id2label: dict) -> dict:
    """The label map as config kwargs. num_labels follows from id2label: passing it too makes transformers warn
    that it disagrees with a checkpoint's own id2label, before ours replaces it."""
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def resolve_model(config: TrainConfig, log=print) -> LoadedModel:
    spec, overrides = config.model, dict(config.model_overrides or {})
    path = repo_path(spec)
    # checkpoints/ holds the checkpoints the repository ships; until one is there, fall back (loudly)
    if not (path / "config.json").exists() and spec.startswith("checkpoints/") and config.fallback_model:
        spec, overrides = fallback_spec(config.fallback_model)
        log(f"WARNING: checkpoint {config.model} not found; training {spec} from scratch instead (fallback_model "
            f"{config.fallback_model}; expect a much lower mAP; scripts/configs/pretrain_shapes_a.yaml makes it)")
        path = Path(spec)
    if spec in preset_names():
        loaded = resolve_preset(spec, overrides, config)
    elif not path.exists() and looks_like_path(spec):
        raise FileNotFoundError(f"--model {spec}: no such folder (and not a preset: {', '.join(preset_names())})")
    else:
        loaded = resolve_checkpoint(str(path) if (path / "config.json").exists() else spec, overrides, config)
    return loaded


def with_recipe(config: TrainConfig, family: ModelFamily, model_config, overrides: dict,
                checkpoint: bool) -> tuple[dict, str]:
    """The user's overrides over the fields of the run's recipe, as config kwargs (a preset) or from_pretrained
    kwargs (a checkpoint), and the note saying what the recipe set."""
    fields, note = recipe_overrides(config.recipe, family.name, model_config, overrides, checkpoint=checkpoint)
    return {**fields, **overrides}, note


def fallback_spec(fallback: str) -> tuple[str, dict]:
    """A preset name, or a training config file whose `model` / `model_overrides` define the architecture."""
    if fallback.endswith((".yaml", ".yml", ".json")):
        values = load_config_file(repo_path(fallback))
        return values["model"], dict(values.get("model_overrides") or {})
    return fallback, {}


def make_processor(family: ModelFamily, config: TrainConfig, base=None):
    """The checkpoint's processor (or a fresh one) sized for this run's images (unsized while image_size is
    not chosen yet)."""
    if config.image_size is None:
        return base if base is not None else family.processor_class()
    max_size = config.max_size or round(config.image_size * 1333 / 800)
    size = {"shortest_edge": config.image_size, "longest_edge": max_size}
    if base is None:
        return family.processor_class(size=size)
    base.size = size
    return base


def resolve_preset(name: str, overrides: dict, config: TrainConfig) -> LoadedModel:
    probe = preset_config(name, **overrides)
    family = family_of_type(probe.model_type)
    overrides, recipe_note = with_recipe(config, family, probe, overrides, checkpoint=False)
    policy = resolve_policy(config.backbone_policy, bool(getattr(probe, "use_pretrained_backbone", False)))

    def build(id2label, log):
        model_config = preset_config(name, **{**overrides, **policy_overrides(policy), **label_kwargs(id2label)})
        model = family.detection_class(model_config)
        loaded.backbone_note = apply_backbone_policy(model, policy)
        log(f"model: preset {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
            f"random weights); backbone {loaded.backbone_note}")
        return model

    pretrained_backbone = bool(getattr(probe, "use_pretrained_backbone", False))
    source = f"preset {name} (" + ("ImageNet backbone, random transformer" if pretrained_backbone
                                   else "random weights") + ")"
    loaded = LoadedModel(family, source, make_processor(family, config), build=build, pretrained=pretrained_backbone,
                         recipe_note=recipe_note)
    return loaded


def resolve_checkpoint(spec: str, overrides: dict, config: TrainConfig) -> LoadedModel:
    _modeling()  # registers detrkit's Auto classes
    remote = {"trust_remote_code": True} if config.trust_remote_code else {}
    checkpoint_config = load_checkpoint_config(spec, remote)
    family = family_of_type(checkpoint_config.model_type)
    effective = SimpleNamespace(**{**checkpoint_config.to_dict(), **overrides})  # the config it will load with
    overrides, recipe_note = with_recipe(config, family, effective, overrides, checkpoint=True)
    policy = resolve_policy(config.backbone_policy, pretrained=True)
    folder = Path(spec) if Path(spec).exists() else None
    if folder is not None:
        check_weights_file(folder, f"--model {spec}")
    processor = checkpoint_processor(spec, folder, remote)
    processor_size = dict(processor.size) if processor is not None and getattr(processor, "size", None) else None
    if processor is None:  # train sizes its own processor anyway: the family's default will do, announced
        processor = default_processor(family, f"--model {spec}")
    processor = make_processor(family, config, processor)

    def build(id2label, log):
        cls = family.detection_class
        same_labels = {int(k): v for k, v in checkpoint_config.id2label.items()} == id2label
        with hold_load_report() as release_report:
            model, info = cls.from_pretrained(spec, **overrides, **policy_overrides(policy), **label_kwargs(id2label),
                                              ignore_mismatched_sizes=not same_labels, output_loading_info=True)
            release_report(only_head=not info.get("unexpected_keys")
                           and not reinitialised_besides_head(info, allow_head=not same_labels))
        check_loading(info, spec, allow_head=not same_labels)
        head = "kept" if same_labels else f"new class head for {len(id2label)} classes (was " \
                                          f"{len(checkpoint_config.id2label)})"
        loaded.backbone_note = apply_backbone_policy(model, policy)
        log(f"model: {spec}; {head}; backbone {loaded.backbone_note}")
        return model

    loaded = LoadedModel(family, spec, processor, build=build, processor_size=processor_size,
                         hub_id=None if folder else spec, recipe_note=recipe_note)
    return loaded


def checkpoint_processor(spec: str, folder: Path | None, remote: dict):
    """The checkpoint's own detection processor, or None where it has none (a folder without
    preprocessor_config.json, a Hub repository whose processor cannot be loaded or does not detect)."""
    from transformers import AutoImageProcessor

    if folder is not None and not has_processor(folder):
        return None
    try:
        processor = AutoImageProcessor.from_pretrained(spec, **remote)
    except (OSError, ValueError):
        return None
    return processor if hasattr(processor, "post_process_object_detection") else None


def load_checkpoint_config(spec: str, remote: dict):
    """The checkpoint's config, or one line saying why it cannot be read (and how to allow remote code)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec, **remote)
    except ValueError as error:
        if "trust_remote_code" in str(error) and not remote:
            raise ValueError(f"--model {spec} needs its own code from the Hub to load; if you trust that "
                             "repository, add --trust-remote-code") from None
        raise ValueError(f"--model {spec}: cannot read its config ({' '.join(str(error).split())[:300]})") from None
    except OSError as error:
        where = "folder" if Path(spec).exists() else "preset, folder or Hub id"
        raise OSError(f"--model {spec}: not a usable {where} ({' '.join(str(error).split())[:300]}); presets: "
                      f"{', '.join(preset_names())}") from None


def check_loading(info: dict, spec: str, allow_head: bool) -> None:
    """Fail if anything but the class head was re-initialised (missing or shape-mismatched weights)."""
    bad = reinitialised_besides_head(info, allow_head)
    if bad:
        raise ValueError(f"loading {spec} would re-initialise {len(bad)} weight(s) besides the class head, e.g. "
                           f"{sorted(bad)[:8]}; the checkpoint does not match this architecture "
                           f"(check model_overrides)")


def reinitialised_besides_head(info: dict, allow_head: bool) -> list[str]:
    """The missing or shape-mismatched weights, less the class head's when a new head is expected."""
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", [])]
    missing = list(info.get("missing_keys", []))
    return [k for k in mismatched + missing if not (allow_head and any(h in k for h in HEAD_KEYS))]

"""Training configuration: one flat dataclass, filled from defaults < config file < command line.

Every field is also a command-line flag (`batch_size` -> `--batch-size 8`) and can be set with
`--set batch_size=8`; dict fields take dotted keys (`--set model_overrides.d_model=128`). Values are
parsed as YAML, so `--set lr=2e-4`, `--set mixed_precision=bf16` and `--set scales=[128,160]` all work.
`None` fields mean "the paper's recipe for this model" and are resolved in `resolve_recipe`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "scripts" / "configs" / "finetune_shapes_b.yaml"


@dataclass
class TrainConfig:
    # what to train and on what
    model: str = "checkpoints/deformable-detr-shapes-a"  # preset name, local folder or Hub id
    # used, with a warning, while `model` is a missing checkpoints/ folder: a preset, or a config file whose
    # model / model_overrides define the architecture (trained from scratch)
    fallback_model: str | None = "scripts/configs/pretrain_shapes_a.yaml"
    model_overrides: dict = field(default_factory=dict)  # config kwargs (presets) or from_pretrained kwargs
    data: str = "shapes-b"  # built-in name, COCO folder, datasets path / Hub id, or imagefolder
    data_cache: str = "~/.cache/detrkit/data"  # where built-in sets are generated
    builtin_num_train: int | None = None  # built-in set sizes (None: the generator's defaults, 512 / 128)
    builtin_num_val: int | None = None
    train_split: str = "train"
    eval_split: str = "val"
    invalid_records: str = "skip"  # "skip" (reported) or "raise"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    output_dir: str = "outputs/demo"
    # images and augmentation (the DETR recipe, sizes scaled to the data)
    image_size: int = 128  # shortest edge at evaluation
    max_size: int | None = None  # longest edge cap; None -> 1333 / 800 * image_size
    scales: list | None = None  # training shortest edges; None -> image_size only
    horizontal_flip: bool = True
    random_crop: bool = False  # DETR's random-size-crop branch
    augment: bool = True
    # optimisation (None -> the model's paper recipe, see `resolve_recipe`)
    epochs: int = 12
    max_steps: int | None = None  # stop after this many optimizer steps (tests, smoke runs)
    max_train_minutes: float | None = None  # stop training (then evaluate and export) after this long
    batch_size: int = 8  # per process
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    lr: float | None = None  # DETR 1e-4, Deformable DETR 2e-4
    lr_backbone_mult: float = 0.1
    lr_linear_proj_mult: float = 0.1  # Deformable: sampling_offsets and reference_points
    weight_decay: float = 1e-4
    clip_grad_norm: float = 0.1
    schedule: str = "step"  # "step" or "cosine"
    lr_drop_epoch: int | None = None  # step decay epoch; None -> 2/3 of `epochs`
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    backbone_policy: str = "auto"  # "auto", "pretrained" (frozen BN + stem) or "scratch" (all trainable)
    # bookkeeping
    seed: int = 42
    mixed_precision: str = "no"  # "no", "bf16", "fp16"
    num_workers: int = 0
    eval_every: int = 1  # epochs; 0 disables in-training evaluation
    checkpoint_every: int = 200  # optimizer steps; 0 only at epoch ends
    keep_checkpoints: int = 1  # step checkpoints kept besides `best`
    log_with: list | None = field(default_factory=lambda: ["tensorboard"])
    resume: str | None = None  # "latest", or a checkpoint folder
    distill_from: str | None = None  # MTKD: an exact DETR teaching this (ACT) student (training/distillation.py)
    predictions_image: bool = True  # draw predictions on a few eval images at the end
    threshold: float = 0.5  # score threshold of the predictions drawing

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def repo_path(path: str | Path) -> Path:
    """`path` as given if it exists, else relative to the repository (so the defaults work from any folder)."""
    path = Path(path).expanduser()
    return path if path.exists() or path.is_absolute() or not (REPO_ROOT / path).exists() else REPO_ROOT / path


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict (JSON is valid YAML, so one parser reads both)."""
    text = Path(path).read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of keys to values, got {type(values).__name__}")
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `key=value` strings (value parsed as YAML; `a.b=v` sets key b of dict field a)."""
    values = json.loads(json.dumps(values))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        *parents, leaf = key.strip().split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {item!r}: {parent!r} is not a mapping")
        target[leaf] = value
    return values


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """YAML 1.1 reads `2e-4` (no dot) as a string and `no` as False: give each its field's type back."""
    if isinstance(value, bool) and annotation.startswith("str"):
        return "yes" if value else "no"  # e.g. `--mixed-precision no`, accelerate's own spelling
    if not isinstance(value, str) or not ("float" in annotation or "int" in annotation):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"config key {name!r}: expected a number, got {value!r}") from None
    return int(number) if "float" not in annotation and number.is_integer() else number


def build_config(values: dict) -> TrainConfig:
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {TrainConfig.field_names()}")
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: _coerce(k, v, types[k]) for k, v in values.items()})


def argument_parser(description: str = "Train a DETR-family detector") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML or JSON file with any of the keys below (the default is the demo fine-tuning)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key (repeatable); dotted keys reach into dict fields")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        # flags default to None so that only flags actually given override the config file
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="V",
                            help=f"(default: {getattr(defaults, f.name)!r})")
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < --config file < --flags < --set overrides."""
    args = argument_parser().parse_args(argv)
    values = load_config_file(repo_path(args.config)) if args.config else {}
    flags = [f"{name}={getattr(args, name)}" for name in TrainConfig.field_names() if getattr(args, name) is not None]
    return build_config(apply_overrides(values, flags + args.overrides))


def resolve_recipe(config: TrainConfig, model_kind: str) -> TrainConfig:
    """Fill the `None` optimisation fields with the paper recipe of `model_kind` ("detr" or "deformable")."""
    lr = config.lr if config.lr is not None else {"detr": 1e-4, "deformable": 2e-4}[model_kind]
    lr_drop = config.lr_drop_epoch if config.lr_drop_epoch is not None else max(1, round(config.epochs * 2 / 3))
    return dataclasses.replace(config, lr=lr, lr_drop_epoch=lr_drop,
                               eval_batch_size=config.eval_batch_size or config.batch_size)

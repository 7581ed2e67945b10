"""Training configuration: one flat dataclass, filled from defaults < config file < command line.

Every field is also a command-line flag (`batch_size` -> `--batch-size 8`, booleans also bare: `--ema`) and can
be set with `--set batch_size=8`; dict fields take dotted keys (`--set model_overrides.d_model=128`).

How text becomes a value, so that no folder or Hub id is ever read as something else: a flag keeps its field's
type (`--output-dir 010` is the folder `010`; only list and dict flags such as `--scales '[128, 160]'` are read as
YAML). `--set` values and config files are read as YAML, except that a field typed `str` (paths, ids, names) takes
the text as written: `--set output_dir=null` and `output_dir: 2026-12-07` are folders of those names. An empty
value (`--set resume=`, `resume:`) leaves the field unset; JSON config files are typed already and read as JSON.

Which file: with neither `--model` nor `--data` (nor `--config`) the run is the demo, read from
scripts/configs/finetune_shapes_b.yaml in the repository. Any other run starts from the defaults below, where
`None` means "chosen for this run": the model's paper recipe at its checkpoint's own image size (`resolve_for_model`),
epochs / decay epoch / evaluation frequency from the data size (`resolve_for_data`), launcher settings for
mixed precision and gradient accumulation, and an output folder of its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from detrkit.cli.device_option import check_device_name
from detrkit.cli.options import parse_bool
from detrkit.errors import UsageError

from ..checkout import checkout_root
from .recipes import DEFAULT_RECIPE, RECIPES

if TYPE_CHECKING:  # the table imports the models; the config stays light for --help
    from detrkit.families import ModelFamily

REPO_ROOT = checkout_root()  # None when installed from a wheel
DEMO_CONFIG = Path("scripts") / "configs" / "finetune_shapes_b.yaml"
LAUNCHER_ENV = {"mixed_precision": "ACCELERATE_MIXED_PRECISION",
                "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"}
ALIASES = {"log_with": "report_to",  # earlier names, still read from config files and flags (hidden in --help)
           "predictions_image": "drawings"}
STEP_FIELDS = ("detector_step",)  # dict fields that hold overrides of this config itself


def option(default: Any = None, help: str = "", factory=None):
    """A field with its --help text; `default` None means "chosen for the run" (the help says how)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to train and on what
    task: str = option("detection", "'detection', or 'panoptic' / 'instance': DETR's mask head trained on top of "
                                    "the detector (training/segmentation.py; the data needs masks)")
    freeze_detector: bool = option(True, "panoptic / instance: the paper's two steps (detector, then the mask head "
                                         "with the detector frozen); false: one joint run")
    cache_detector_outputs: bool = option(True, "panoptic / instance, the mask-head step on a frozen detector: run "
                                                "the detector once per image and train the head on its kept "
                                                "outputs (same losses, far cheaper steps; one process)")
    detector_step: dict = option(help="panoptic / instance with freeze_detector: overrides of this config for step "
                                      "1, the detector's training (e.g. epochs); empty: the model is used as it is",
                                 factory=dict)
    model: str | None = option(None, "starting point: a preset (deformable-detr, detr-resnet-50, ...: random "
                                     "transformer), a save_pretrained folder or a Hub id (detrkit's, or "
                                     "transformers' DETR / Deformable DETR checkpoints); needed with --data "
                                     "(default: none; with neither --model nor --data, the demo)")
    fallback_model: str | None = option(None, "used, with a warning, while `model` is a missing checkpoints/ "
                                              "folder: a preset, or a config file whose model / model_overrides "
                                              "define the architecture (trained from scratch)")
    model_overrides: dict = option(help="config kwargs of a preset, or from_pretrained kwargs of a checkpoint",
                                   factory=dict)
    recipe: str = option(DEFAULT_RECIPE, "named training recipe, model config fields that model_overrides "
                                         "override and the default lr (training/recipes.py): 'short-schedule' "
                                         "(DN-DETR / DINO denoising at 4x the paper's lr, measured fastest), "
                                         "'paper' as the papers train, 'fast' every change together, the others "
                                         "one change alone")
    trust_remote_code: bool = option(False, "allow a Hub model's own Python code to run (only for repositories "
                                            "you trust)")
    device: str | None = option(None, "cpu, cuda, cuda:N or mps (default: what accelerate chooses: the GPU(s) when "
                                      "visible, else cpu); cpu is accelerate's cpu=True, cuda:N selects one GPU "
                                      "for a single-process run")
    data: str | None = option(None, "training data: a folder (COCO, YOLO, VOC, imagefolder, datasets "
                                    "save_to_disk), a Hub dataset id, or a built-in set (shapes-a, shapes-b) "
                                    "(default: none; with neither --model nor --data, the demo)")
    data_cache: str = option("~/.cache/detrkit/data", "where built-in sets are generated")
    builtin_num_train: int | None = option(None, "built-in sets: training images (default: the generator's, 512)")
    builtin_num_val: int | None = option(None, "built-in sets: validation images (default: the generator's, 128)")
    train_split: str = option("train", "training split name")
    eval_split: str = option("val", "evaluation split name")
    invalid_records: str = option("skip", "a bad image or annotation: 'skip' (reported and counted) or 'raise'")
    max_train_samples: int | None = option(None, "use only the first N training images (smoke runs)")
    max_eval_samples: int | None = option(None, "use only the first N evaluation images")
    output_dir: str | None = option(None, "run folder (default: outputs/<model>-<data>-<date-time>)")
    overwrite_output_dir: bool = option(False, "start afresh in an output folder that holds an earlier run's "
                                               "checkpoints (they are deleted)")
    # images and augmentation (the DETR recipe, sizes scaled to the images)
    image_size: int | None = option(None, "shortest edge at evaluation (default: the checkpoint processor's, "
                                          "800 for presets, the generated size 128 for built-in sets)")
    max_size: int | None = option(None, "longest-edge cap (default: the checkpoint processor's, else "
                                        "1333/800 x image_size)")
    scales: list | None = option(None, "training shortest edges (default: DETR's 480..800 scaled to image_size)")
    horizontal_flip: bool = option(True, "random horizontal flips")
    random_crop: bool = option(False, "DETR's random-size-crop branch")
    color_jitter: float = option(0.0, "photometric augmentation: brightness, contrast and saturation each "
                                      "scaled by a factor in [1-s, 1+s] (0 = off; 0.2-0.4 typical)")
    transforms: str | None = option(None, "your own training transforms, run before DETR's: 'module:name' or "
                                          "'file.py:name', a torchvision.transforms.v2 transform (or a "
                                          "function returning one) over {'image', 'boxes', ...} samples")
    augment: bool = option(True, "training augmentation at all (off: resize as at evaluation)")
    # optimisation
    epochs: int | None = option(None, "training epochs (default: from the data size; printed at start)")
    max_steps: int | None = option(None, "stop after this many optimizer steps (smoke runs)")
    max_train_minutes: float | None = option(None, "stop training (then evaluate and export) after this long")
    batch_size: int = option(4, "images per process and step (the papers: 4 per GPU)")
    eval_batch_size: int | None = option(None, "evaluation batch size (default: batch_size)")
    gradient_accumulation_steps: int | None = option(None, "batches per optimizer step (default: the launcher's, "
                                                           "`accelerate launch --gradient_accumulation_steps`, else 1)")
    lr: float | None = option(None, "learning rate (default: the paper's, DETR 1e-4, Deformable DETR 2e-4)")
    lr_backbone_mult: float = option(0.1, "backbone learning rate multiple")
    lr_linear_proj_mult: float = option(0.1, "Deformable DETR: sampling_offsets / reference_points lr multiple")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    clip_grad_norm: float = option(0.1, "gradient clipping (max norm; 0 = off)")
    schedule: str = option("step", "'step' (x lr_gamma at lr_drop_epoch) or 'cosine'")
    lr_drop_epoch: int | None = option(None, "step decay epoch (default: 4/5 of the epochs, as both papers)")
    lr_gamma: float = option(0.1, "step decay factor")
    warmup_steps: int = option(0, "linear warmup steps")
    backbone_policy: str = option("auto", "'auto', 'pretrained' (frozen BatchNorm + stem) or 'scratch'")
    ema: bool = option(False, "keep an exponential moving average of the weights; it is evaluated and exported")
    ema_decay: float = option(0.9998, "EMA decay per optimizer step (warmed up over the first steps)")
    patience: int | None = option(None, "stop after this many evaluations without a better AP (default: off, "
                                        "never stop early)")
    # bookkeeping
    seed: int = option(42, "random seed (data order, augmentation, initialisation)")
    mixed_precision: str | None = option(None, "'no', 'bf16' or 'fp16' (default: the launcher's, "
                                               "`accelerate launch --mixed_precision`, else 'no')")
    memory_savers: str = option("auto", "keep less for backward, same results (training/memory_savers.py): "
                                        "'on', 'off' or 'auto' (on when training on the CPU)")
    num_workers: int = option(2, "DataLoader worker processes per training process")
    eval_every: int | None = option(None, "evaluate every N epochs, 0 = only at the end (default: about 10 "
                                          "evaluations per run)")
    checkpoint_every: int = option(200, "checkpoint every N optimizer steps (and at every epoch end; 0 = epochs only)")
    keep_checkpoints: int = option(1, "step checkpoints kept besides the best one")
    report_to: list | None = option(help="experiment trackers: tensorboard, wandb, mlflow, comet_ml, aim, "
                                         "clearml, dvclive (accelerate's names), [] for none",
                                    factory=lambda: ["tensorboard"])
    resume: str | None = option(None, "'latest' (the newest checkpoint of the run folder) or a checkpoint folder")
    distill_from: str | None = option(None, "MTKD: a trained exact DETR that teaches this (ACT) student through its "
                                            "predictions and encoder features (training/distillation.py)")
    drawings: bool = option(True, "draw predictions on a few evaluation images at the end (predictions.png)")
    threshold: float | None = option(None, "score threshold of that drawing (default: 0.5 for DETR's softmax "
                                           "scores, 0.3 for Deformable DETR's sigmoid focal scores)")
    push_to_hub: str | None = option(None, "at the end, upload model, processor and card to this Hub repository")
    private: bool = option(False, "with --push-to-hub: create the repository as private")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {"invalid_records": ("skip", "raise"), "schedule": ("step", "cosine"),
           "task": ("detection", "panoptic", "instance"),
           "backbone_policy": ("auto", "pretrained", "scratch"), "mixed_precision": ("no", "bf16", "fp16"),
           "memory_savers": ("auto", "on", "off"), "recipe": tuple(RECIPES)}
AT_LEAST = {"epochs": 1, "max_steps": 1, "batch_size": 1, "eval_batch_size": 1, "gradient_accumulation_steps": 1,
            "image_size": 1, "max_size": 1, "max_train_samples": 1, "max_eval_samples": 1, "builtin_num_train": 1,
            "builtin_num_val": 1, "lr": 0, "lr_drop_epoch": 0, "num_workers": 0, "eval_every": 0,
            "checkpoint_every": 0, "keep_checkpoints": 1, "warmup_steps": 0, "patience": 1, "weight_decay": 0,
            "clip_grad_norm": 0, "color_jitter": 0, "max_train_minutes": 0, "lr_backbone_mult": 0,
            "lr_linear_proj_mult": 0}


def find_in_repository(path: str | Path) -> Path | None:
    """`path` as given (relative to the current folder) if it exists, else relative to the checkout detrkit runs
    from (an editable install), else None."""
    path = Path(path).expanduser()
    for candidate in (path, REPO_ROOT / path if REPO_ROOT else None):
        if candidate is not None and candidate.exists():
            return candidate
    return None


def repo_path(path: str | Path) -> Path:
    """`path` as given if it exists, else relative to the repository (so the defaults work from any folder)."""
    return find_in_repository(path) or Path(path).expanduser()


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict; in YAML, `str` fields keep their text as written."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else read_yaml_config(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise UsageError(f"config file {path} is not valid YAML/JSON: {' '.join(str(error).split())}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise UsageError(f"config file {path}: expected a mapping of keys to values, got {type(values).__name__}")
    return values


def read_yaml_config(text: str) -> Any:
    """YAML, except that the value of a `str` field is its text as written (YAML 1.1 would turn `010` into 8,
    `on` into True, `2026-12-07` into a date and `null` into None)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if isinstance(node, yaml.MappingNode):
            return _construct_config(loader, node)
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _construct_config(loader: yaml.SafeLoader, mapping: yaml.MappingNode) -> dict:
    values = {}
    for key_node, value_node in mapping.value:
        key = loader.construct_object(key_node, deep=True)
        name = ALIASES.get(key, key) if isinstance(key, str) else key
        if name in STEP_FIELDS and isinstance(value_node, yaml.MappingNode):
            values[key] = _construct_config(loader, value_node)  # a config of its own
        elif is_text_field(name) and isinstance(value_node, yaml.ScalarNode):
            values[key] = value_node.value if value_node.value != "" or value_node.style else None
        else:
            values[key] = loader.construct_object(value_node, deep=True)
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `key=value` strings (`a.b=v` sets key b of dict field a): the value is read as YAML unless the key is
    a `str` field (then it is the text as written); an empty value unsets the key."""
    values = json.loads(json.dumps(values))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        parents = [ALIASES.get(parent, parent) for parent in parents]
        leaf = ALIASES.get(leaf, leaf) if not parents or parents[-1] in STEP_FIELDS else leaf
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"--set {item!r}: {parent!r} is not a mapping")
        target[leaf] = _override_value(raw, text=is_text_field(leaf) and (not parents or parents[-1] in STEP_FIELDS))
    return values


def _override_value(raw: str, text: bool) -> Any:
    if raw == "":
        return None
    if text:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # e.g. an unbalanced bracket: keep the text


def field_types() -> dict[str, str]:
    """Each field's annotation as written (`from __future__ import annotations`: e.g. "str | None")."""
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def is_text_field(name: Any) -> bool:
    return field_types().get(name, "").startswith("str")


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Give each value its field's type (YAML 1.1 reads `2e-4` as a string), or say which key has a value of
    the wrong kind."""
    if value is None:
        return None
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise UsageError(f"{name}: expected true or false, got {value!r}")
        return value
    if annotation.startswith("str"):
        if isinstance(value, os.PathLike) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return str(os.fspath(value) if isinstance(value, os.PathLike) else value)  # JSON's 10, a Path
        if not isinstance(value, str):
            raise UsageError(f"{name}: expected a string, got {value!r}")
        return value
    if annotation.startswith("list"):
        return [value] if isinstance(value, (str, int, float)) else list(value)
    if annotation.startswith("dict"):
        if not isinstance(value, dict):
            raise UsageError(f"{name}: expected a mapping, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"config key {name!r}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"config key {name!r}: expected a number, got {value!r}") from None
    if "float" in annotation:
        return number
    if not number.is_integer():
        raise UsageError(f"{name}: expected a whole number, got {value!r}")
    return int(number)


def build_config(values: dict) -> TrainConfig:
    values = {ALIASES.get(k, k): v for k, v in values.items()}
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise UsageError(f"unknown config key(s) {unknown}; valid keys: {TrainConfig.field_names()}")
    values = {k: _coerce(k, v, field_types()[k]) for k, v in values.items()}
    for name in STEP_FIELDS:
        if values.get(name):
            values[name] = step_overrides(name, values[name])
    return validate(TrainConfig(**values))


def step_overrides(name: str, values: dict) -> dict:
    """A step's overrides of the config (`detector_step`), checked and typed as the config's own keys."""
    values = {ALIASES.get(k, k): v for k, v in values.items()}
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise UsageError(f"{name}: unknown config key(s) {unknown}")
    return {k: _coerce(f"{name}.{k}", v, field_types()[k]) for k, v in values.items()}


def validate(config: TrainConfig) -> TrainConfig:
    """Impossible values are refused here, before anything is loaded."""
    for name, low in AT_LEAST.items():
        value = getattr(config, name, None)
        if value is not None and value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    for name, allowed in CHOICES.items():
        value = getattr(config, name)
        if value is not None and value not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    check_device_name(config.device)
    if config.threshold is not None and not 0 <= config.threshold <= 1:
        raise UsageError(f"threshold must be in [0, 1], got {config.threshold}")
    if not 0 < config.ema_decay < 1:
        raise UsageError(f"ema_decay must be in (0, 1), got {config.ema_decay}")
    if config.scales is not None and not all(isinstance(s, int) and s > 0 for s in config.scales):
        raise UsageError(f"scales must be a list of positive whole numbers, got {config.scales}")
    return config


GROUPS = {  # --help's sections, in order; every field is in exactly one (test_cli_help checks it)
    "model": ("task", "model", "fallback_model", "model_overrides", "recipe", "trust_remote_code", "device"),
    "data": ("data", "data_cache", "builtin_num_train", "builtin_num_val", "train_split", "eval_split",
             "invalid_records", "max_train_samples", "max_eval_samples"),
    "images": ("image_size", "max_size", "scales", "horizontal_flip", "random_crop", "color_jitter", "transforms",
               "augment"),
    "schedule": ("epochs", "max_steps", "max_train_minutes", "schedule", "lr_drop_epoch", "lr_gamma",
                 "warmup_steps", "patience"),
    "optimisation": ("batch_size", "gradient_accumulation_steps", "lr", "lr_backbone_mult", "lr_linear_proj_mult",
                     "weight_decay", "clip_grad_norm", "backbone_policy", "ema", "ema_decay", "mixed_precision",
                     "memory_savers", "num_workers", "seed"),
    "evaluation": ("eval_batch_size", "eval_every", "drawings", "threshold"),
    "output / sharing": ("output_dir", "overwrite_output_dir", "checkpoint_every", "keep_checkpoints", "report_to",
                         "resume", "push_to_hub", "private"),
    "segmentation (--task panoptic / instance)": ("freeze_detector", "cache_detector_outputs", "detector_step"),
    "distillation": ("distill_from",),
}
METAVARS = {  # the written form of the options that are not one word or number
    "model_overrides": "'{KEY: VALUE, ...}'", "detector_step": "'{KEY: VALUE, ...}'",
    "scales": "'[EDGE, ...]'", "report_to": "'[NAME, ...]'",
}


def shown_default(f: dataclasses.Field) -> str:
    """What --help says of a field's default: its value, "off" for None and False (booleans say on / off), or
    nothing where the help text explains it (the values chosen for the run)."""
    if "(default:" in f.metadata.get("help", ""):
        return ""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        return " (default: on)" if default else " (default: off)"
    if default is None or default == {}:
        return " (default: off)" if default is None else " (default: none)"
    if isinstance(default, list):
        return f" (default: {', '.join(map(str, default)) or 'none'})"
    return f" (default: {default})"


def add_field_option(group, f: dataclasses.Field) -> None:
    """`--name VALUE` for a field (its text typed by `flag_value`); booleans also bare (`--ema`); flags default to
    None so that only the flags actually given override the config file."""
    is_bool = str(f.type).startswith("bool")
    # choices shown, not enforced by argparse: `validate` refuses a wrong one in one line, from a file too
    choices = "{" + ",".join(CHOICES[f.name]) + "}" if f.name in CHOICES else None
    group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                       metavar=choices or METAVARS.get(f.name, "BOOL" if is_bool else None),
                       nargs="?" if is_bool else None, const=True if is_bool else None,
                       help=f.metadata.get("help", "") + shown_default(f))


def flag_value(name: str, text: str | bool) -> Any:
    """A flag's text as its field's type: text fields keep it as written, numbers and booleans are parsed as
    such, lists and dicts are written in YAML. A wrong value is one line naming the flag."""
    annotation = field_types()[name]
    if annotation.startswith("str") or text is True:  # True: a bare boolean flag
        return text
    try:
        if annotation.startswith("bool"):
            return parse_bool(text)
        value = text if annotation.startswith(("int", "float")) else yaml.safe_load(text)
        return _coerce(name, value, annotation)
    except (argparse.ArgumentTypeError, UsageError, yaml.YAMLError) as error:
        raise UsageError(f"--{name.replace('_', '-')} {text}: {' '.join(str(error).split())}") from None


def argument_parser(description: str = "Train or fine-tune a DETR-family detector") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detrkit train", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Precedence: defaults < --config file < flags < --set. With neither --model nor --data the run is "
               "the demo (scripts/configs/finetune_shapes_b.yaml).\nBooleans: --ema, --ema true, --ema false. "
               "Flags keep their type (--output-dir 010 is the folder 010); list and dict flags are YAML: "
               "--model-overrides '{d_model: 128}', --scales '[128, 160]'.\n"
               "Add --debug to see a traceback on errors.")
    parser.add_argument("--config", default=None,
                        help="YAML or JSON file with any of the keys below, spelled with underscores (default: "
                             "the demo file for the demo, none otherwise)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key (repeatable), value read as YAML except for text fields (paths, "
                             "ids), which take it as written; dotted keys reach into dict fields: "
                             "--set model_overrides.d_model=128 --set lr=2e-4")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for title, names in GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            add_field_option(group, fields[name])
    for old, new in ALIASES.items():
        is_bool = field_types()[new].startswith("bool")
        parser.add_argument(f"--{old.replace('_', '-')}", dest=new, default=None, nargs="?" if is_bool else None,
                            const=True if is_bool else None, help=argparse.SUPPRESS)
    return parser


def is_demo(args: argparse.Namespace) -> bool:
    """No --config, --model or --data (as flags or --set): the demo."""
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    return args.config is None and args.model is None and args.data is None and not {"model", "data"} & given


def demo_config_file() -> Path:
    found = find_in_repository(DEMO_CONFIG)
    if found is None:
        checkout = REPO_ROOT or "a checkout (detrkit runs from a wheel)"
        raise UsageError(f"the demo (no --model / --data) needs detrkit's repository: {DEMO_CONFIG} is neither in "
                         f"{Path.cwd()} nor in {checkout}. Run from a clone of detrkit, or name what to train, "
                         "e.g. `detrkit train --model deformable-detr --data path/to/coco`")
    return found


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < --config file (the demo's when nothing says what to train) < --flags < --set overrides."""
    args = argument_parser().parse_args(argv)
    config_file = args.config if args.config is not None else (demo_config_file() if is_demo(args) else None)
    values = load_config_file(find_in_repository(config_file) or config_file) if config_file else {}
    flags = {name: flag_value(name, getattr(args, name)) for name in TrainConfig.field_names()
             if getattr(args, name) is not None}
    config = build_config(apply_overrides({**values, **flags}, args.overrides))
    if config.data is None or config.model is None:
        missing, given = ("--model", "--data") if config.model is None else ("--data", "--model")
        example = "a preset such as deformable-detr, a checkpoint folder or a Hub id" if missing == "--model" \
            else "a COCO / YOLO / VOC folder, a datasets folder or a Hub dataset id"
        raise UsageError(f"{given} was given without {missing}: name {example}")
    return config


def default_output_dir(config: TrainConfig, now: float | None = None) -> str:
    """outputs/<model>-<data>-<YYYYmmdd-HHMMSS>, names reduced to their last path part."""
    def short(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name).rstrip("/")).name) or "run"

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return str(Path("outputs") / f"{short(config.model)}-{short(config.data)}-{stamp}")


def launcher_settings(config: TrainConfig, environ=os.environ) -> tuple[TrainConfig, list[str]]:
    """Mixed precision and gradient accumulation: the config's if set, else the launcher's (accelerate launch
    exports them as environment variables), else the defaults; and where each came from."""
    notes, values = [], {}
    for name, variable in LAUNCHER_ENV.items():
        configured, launched = getattr(config, name), environ.get(variable)
        if configured is not None:
            values[name] = configured
            source = "config" + (f", over the launcher's {launched}" if launched and str(launched) != str(configured)
                                 else "")
        elif launched:
            values[name], source = launched if name == "mixed_precision" else int(launched), "launcher"
        else:
            values[name], source = ("no" if name == "mixed_precision" else 1), "default"
        notes.append(f"{name} {values[name]} ({source})")
    return validate(dataclasses.replace(config, **values)), notes


def resolve_for_model(config: TrainConfig, family: ModelFamily, processor_size: dict | None,
                      builtin_data: bool) -> tuple[TrainConfig, list[str]]:
    """Image size from the checkpoint's processor (800/1333 for the Hub's COCO checkpoints, 800 for presets,
    128 for the generated built-in sets) and the drawing threshold from the model's score type."""
    notes, image_size, max_size = [], config.image_size, config.max_size
    if image_size is None:
        if builtin_data:
            image_size, source = 128, "the built-in sets' generated size"
        elif processor_size and processor_size.get("shortest_edge"):
            image_size, source = int(processor_size["shortest_edge"]), "the checkpoint's processor"
            max_size = max_size or processor_size.get("longest_edge")
        else:
            image_size, source = 800, "the papers' evaluation size"
        notes.append(f"image_size {image_size} ({source})")
    threshold = config.threshold
    if threshold is None:
        threshold = family.drawing_threshold
        notes.append(f"threshold {threshold} ({'sigmoid focal' if family.sigmoid_scores else 'softmax'} scores)")
    return dataclasses.replace(config, image_size=image_size, max_size=max_size, threshold=threshold), notes


def epochs_for(num_images: int, pretrained: bool, family: ModelFamily) -> int:
    """Fine-tuning sees about 30,000 images (30 epochs of 1,000, Hugging Face's DETR fine-tuning guide), between
    12 and 100 epochs; a random transformer gets the papers' schedule (50 / 500 epochs on COCO) at least."""
    if pretrained:
        return min(100, max(12, math.ceil(30_000 / max(1, num_images))))
    return family.paper_epochs


def resolve_for_data(config: TrainConfig, family: ModelFamily, num_images: int, pretrained: bool,
                     lr_scale: float = 1.0) -> tuple[TrainConfig, list[str]]:
    """Fill the `None` schedule fields from the paper of the model's family and the data size; an unset lr is the
    paper's times `lr_scale` (the run's recipe)."""
    notes = []
    epochs = config.epochs
    if epochs is None:
        epochs = epochs_for(num_images, pretrained, family)
        notes.append(f"epochs {epochs} ({num_images} training images, "
                     + ("fine-tuning: about 30,000 images seen, 12-100 epochs)" if pretrained
                        else "random transformer: the paper's schedule)"))
    lr = config.lr if config.lr is not None else family.paper_lr * lr_scale
    if config.lr is None:
        notes.append(f"lr {lr:g} (the {family.title} paper" + (")" if lr_scale == 1 else
                                                                 f"'s x {lr_scale:g}, recipe {config.recipe})"))
    lr_drop = config.lr_drop_epoch
    if lr_drop is None:
        lr_drop = max(1, round(epochs * 4 / 5))
        if config.schedule == "step":
            notes.append(f"lr_drop_epoch {lr_drop} (4/5 of the epochs, as both papers)")
    eval_every = config.eval_every
    if eval_every is None:
        eval_every = max(1, math.ceil(epochs / 10))
        notes.append(f"eval_every {eval_every} (about 10 evaluations)")
    config = dataclasses.replace(config, epochs=epochs, lr=lr, lr_drop_epoch=lr_drop, eval_every=eval_every,
                                 eval_batch_size=config.eval_batch_size or config.batch_size)
    if config.lr_drop_epoch > config.epochs and config.schedule == "step":
        notes.append(f"note: lr_drop_epoch {config.lr_drop_epoch} > epochs {config.epochs}: no decay")
    return config, notes


def resolve_recipe(config: TrainConfig, family: ModelFamily) -> TrainConfig:
    """The paper recipe of the model's family without data-size choices (epochs must be set)."""
    if config.epochs is None:
        raise UsageError("resolve_recipe needs epochs; use resolve_for_data to choose them from the data")
    return resolve_for_data(config, family, 0, True)[0]


class ConfigDumper(yaml.SafeDumper):
    """YAML that reads back as the same config: unset fields are written empty (`resume:`), since `null` in a
    text field is the text "null"."""


ConfigDumper.add_representer(type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", ""))


def format_config(config: TrainConfig, notes: list[str]) -> str:
    """The effective configuration as YAML, then what was chosen for this run and why."""
    text = yaml.dump(config.to_dict(), Dumper=ConfigDumper, sort_keys=False, default_flow_style=None,
                     width=120).rstrip()
    return "effective configuration:\n" + "\n".join(f"  {line}" for line in text.splitlines()) + \
        ("\nchosen for this run: " + "; ".join(notes) if notes else "")

"""Training recipes with names: which of the 2022-2023 training-time changes a run switches on, as config fields of
the model (`--recipe fast`), and its learning rate relative to the paper's. Each change keeps the inference
architecture, except mixed query selection (marked).

A recipe is data: per model family (families.py names), config field -> value, where a value may depend on the
model's own config (`times_num_queries(3)`, `only_if("with_box_refine")`), and `lr_scale`. `recipe_overrides`
resolves the fields for a model; a field the user sets in model_overrides wins over the recipe, as an explicit lr
wins over `lr_scale` (config.resolve_for_data). No torch here: --help reads the names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from detrkit.errors import UsageError

SKIP = object()  # a conditional field that does not apply to this model
ARCHITECTURE_FIELDS = ("mixed_query_selection",)  # add weights: never switched on over a checkpoint without them
# What a recipe does not switch on is off, also where a checkpoint's config (trained with another recipe) has it on:
# a recipe names the whole training. (Architecture fields stay as the checkpoint is.)
OFF = {"deformable_detr": dict(num_denoising=0, denoising_groups=0, num_queries_one_to_many=0,
                               look_forward_twice=False, classification_loss="focal"),
       "detr": dict(num_denoising=0, denoising_groups=0, num_queries_one_to_many=0)}


def times_num_queries(factor: int) -> Callable:
    """H-DETR's extra queries, relative to the model's own query count."""
    return lambda config: factor * config.num_queries


def only_if(flag: str, value: Any = True) -> Callable:
    """`value` when the model has `flag` (look-forward-twice needs box refinement, mixed query selection two-stage)."""
    return lambda config: value if getattr(config, flag, False) else SKIP


# DINO's contrastive denoising (Deformable DETR) and DN-DETR's (DETR: 5 groups, no negatives, labels flipped with
# probability 0.2); H-DETR's one-to-many branch (targets x 6); DINO's query tricks. The query counts are smaller
# than the papers' (DINO's 100 denoising queries, H-DETR's 5 x the queries), which they sized for COCO on GPUs:
# every extra query costs CPU time in every decoder layer (docs/benchmarks.md, "Convergence").
DINO_DENOISING = dict(num_denoising=30, contrastive_denoising=True, label_noise_ratio=0.5, box_noise_scale=0.4)
DN_DETR_DENOISING = dict(denoising_groups=5, contrastive_denoising=False, label_noise_ratio=0.2, box_noise_scale=0.4)
ONE_TO_MANY = dict(num_queries_one_to_many=times_num_queries(1), k_one_to_many=6, lambda_one_to_many=1.0)
DENOISING = {"deformable_detr": DINO_DENOISING, "detr": DN_DETR_DENOISING}
LOOK_FORWARD_TWICE = dict(look_forward_twice=only_if("with_box_refine"))
MIXED_QUERY_SELECTION = dict(mixed_query_selection=only_if("two_stage"))


@dataclass(frozen=True)
class Recipe:
    description: str
    fields: dict[str, dict] = field(default_factory=dict)  # family name -> config field -> value or f(config)
    lr_scale: float = 1.0  # the learning rate as a multiple of the paper's, where the run sets none


RECIPES: dict[str, Recipe] = {
    "paper": Recipe("the papers' recipe: Hungarian matching of the queries alone"),
    # the papers' learning rates were tuned for 50-500 COCO epochs; with denoising steadying the matching, a short
    # run learns faster at 4x (docs/benchmarks.md, "Convergence")
    "short-schedule": Recipe("denoising at 4x the paper's learning rate: for fine-tuning and other short runs",
                             DENOISING, lr_scale=4.0),
    "fast": Recipe("every change together: denoising, one-to-many matching, look-forward-twice, mixed query "
                   "selection (Deformable DETR); DN-DETR denoising and one-to-many matching (DETR)",
                   {"deformable_detr": {**DINO_DENOISING, **ONE_TO_MANY, **LOOK_FORWARD_TWICE,
                                        **MIXED_QUERY_SELECTION},
                    "detr": {**DN_DETR_DENOISING, **ONE_TO_MANY}}),
    # one change alone each, for the convergence benchmark's ablation
    "denoising": Recipe("denoising queries alone (DINO's contrastive for Deformable DETR, DN-DETR's for DETR)",
                        DENOISING),
    "one-to-many": Recipe("H-DETR's hybrid matching alone", {"deformable_detr": ONE_TO_MANY, "detr": ONE_TO_MANY}),
    "look-forward-twice": Recipe("DINO's look-forward-twice alone (Deformable DETR with box refinement)",
                                 {"deformable_detr": LOOK_FORWARD_TWICE}),
    "mixed-query-selection": Recipe("DINO's mixed query selection alone (two-stage Deformable DETR; adds learned "
                                    "content queries)", {"deformable_detr": MIXED_QUERY_SELECTION}),
    "varifocal": Recipe("RT-DETR's varifocal (IoU-aware) classification loss alone (Deformable DETR)",
                        {"deformable_detr": dict(classification_loss="varifocal")}),
}
# what a run gets without --recipe: the one that learned fastest per epoch and per CPU minute in the convergence
# benchmark (docs/benchmarks.md, "Convergence"); "paper" trains as the papers did
DEFAULT_RECIPE = "short-schedule"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_overrides(name: str, family: str, model_config, explicit: dict | None = None,
                     checkpoint: bool = False) -> tuple[dict, str]:
    """The config fields recipe `name` sets on a model of `family` whose config (with the user's overrides) is
    `model_config`, and one line saying what it set and left. Fields in `explicit` (the user's model_overrides)
    are left to the user; architecture-changing fields are not switched on over a `checkpoint` trained without
    them (its weights could not load)."""
    recipe, explicit = get_recipe(name), explicit or {}
    if recipe.fields and family not in recipe.fields:
        raise UsageError(f"recipe {name!r} does not apply to {family} models (only to {', '.join(recipe.fields)}); "
                         f"recipes: {', '.join(RECIPES)}")
    values = recipe.fields.get(family, {})
    chosen, left = {}, []
    switched_off = {k: v for k, v in OFF.get(family, {}).items()
                    if k not in values and getattr(model_config, k, v) != v}  # on in the checkpoint's config
    for key, value in {**values, **switched_off}.items():
        value = value(model_config) if callable(value) else value
        if key in explicit:
            left.append(f"{key} (model_overrides)")
        elif value is SKIP:
            left.append(f"{key} (does not apply)")
        elif checkpoint and key in ARCHITECTURE_FIELDS and not getattr(model_config, key, False):
            left.append(f"{key} (the checkpoint has no weights for it)")
        else:
            chosen[key] = value
    note = f"recipe {name}: " + (", ".join(f"{k}={v}" for k, v in chosen.items()) or "no config fields set")
    return chosen, note + (f"; left: {', '.join(left)}" if left else "")

"""Which of a model's class labels is which of the data's categories.

A model fine-tuned on the data has the data's classes in the data's order. A checkpoint trained elsewhere does
not: transformers' COCO DETR checkpoints have 91 label slots indexed by COCO's own (sparse) category ids, with
"N/A" in the gaps, while the data's labels are contiguous 0..N-1. So each data category is found in the model by
its original id (the model's slot of that id carries the same name), else by its name; a category the model
cannot name is an error, not a silent zero AP.
"""
from __future__ import annotations


def _norm(name) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def map_model_labels(model_id2label: dict, names: list[str], original_ids: list[int] | None = None,
                     ) -> tuple[dict[int, int], str]:
    """{model label: data label} for every data category, and how it was matched ("same", "id", "name").

    Model labels that are no data category (e.g. "N/A") are left out: their detections are dropped."""
    model = {int(k): _norm(v) for k, v in model_id2label.items()}
    wanted = [_norm(n) for n in names]
    if [model.get(i) for i in range(len(wanted))] == wanted and len(model) == len(wanted):
        return {i: i for i in range(len(wanted))}, "same"
    by_name = {}
    for label, name in sorted(model.items()):
        by_name.setdefault(name, label)
    mapping, how, missing = {}, set(), []
    for data_label, name in enumerate(wanted):
        original = original_ids[data_label] if original_ids is not None else None
        if original is not None and model.get(int(original)) == name:
            mapping[int(original)] = data_label
            how.add("id")
        elif name in by_name:
            mapping[by_name[name]] = data_label
            how.add("name")
        else:
            missing.append(names[data_label])
    if missing:
        raise ValueError(f"the model has no class for {len(missing)} of the data's {len(names)} categories "
                         f"({', '.join(map(str, missing[:10]))}); its classes are {sorted(set(model.values()))[:20]}"
                         "...; evaluate a model fine-tuned on these classes (detrkit train replaces the class head)")
    return mapping, "id" if how == {"id"} else ("name" if how == {"name"} else "id and name")


def remap_detections(detections: dict, mapping: dict[int, int]) -> dict:
    """Keep the detections of mapped model labels, relabelled to data labels."""
    import torch

    labels = detections["labels"].tolist()
    keep = torch.tensor([int(l) in mapping for l in labels], dtype=torch.bool)
    new_labels = torch.tensor([mapping[int(l)] for l in labels if int(l) in mapping], dtype=torch.long)
    return {"scores": detections["scores"][keep], "labels": new_labels, "boxes": detections["boxes"][keep]}

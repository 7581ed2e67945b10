"""`to_supervision(results)`: one image's post-processed results as `supervision.Detections` (optional extra).

detrkit's processors return transformers' formats (`post_process_object_detection`: "scores", "labels", "boxes";
`post_process_panoptic/instance_segmentation`: "segmentation", "segments_info"), which supervision's own
`Detections.from_transformers` reads; this adds the label names and a clear error for anything else.
"""
from __future__ import annotations


def to_supervision(results: dict, id2label: dict | None = None):
    """results: one image's dict from the processor's post-processing; id2label: model.config.id2label (names
    land in `detections.data["class_name"]`)."""
    try:
        import supervision as sv
    except ImportError:
        raise ImportError("to_supervision needs the supervision package: pip install 'detrkit[supervision]'") from None
    if isinstance(results, (list, tuple)):
        raise TypeError(f"to_supervision takes one image's results (a dict), got a {type(results).__name__} of "
                        f"{len(results)}: pass results[i]")
    if not isinstance(results, dict) or not ({"boxes", "scores", "labels"} <= results.keys()
                                              or {"segmentation", "segments_info"} <= results.keys()):
        keys = sorted(results) if isinstance(results, dict) else type(results).__name__
        raise ValueError("to_supervision expects post_process_object_detection's {'scores', 'labels', 'boxes'} or "
                         f"a segmentation result {{'segmentation', 'segments_info'}}, got {keys}")
    id2label = None if id2label is None else {int(k): v for k, v in id2label.items()}
    return sv.Detections.from_transformers(results, id2label=id2label)

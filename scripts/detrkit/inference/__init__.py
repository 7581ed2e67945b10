"""detrkit.inference: a trained detector at work (one concept per file). Training (its evaluations and
drawings), evaluate, predict, export, visualize and the demo load and run models through it. It imports neither
training nor deploy.

loading.py            MODEL (save_pretrained folder, Hub id or preset name) -> model in eval mode + its processor
detections.py         detections of PIL images above a threshold, and as JSON-ready dicts
detection_drawing.py  detections drawn onto images; a grid of a few evaluation images
image_sources.py      predict's inputs: files, folders, globs, URLs -> sources with distinct output names
predict_command.py    `detrkit predict`: detections as JSON and drawn, COCO results on a data set's split
video.py              detection on video files: an annotated copy and per-frame JSON
tta.py                test-time augmentation: flip x scales, merged by class-wise NMS
coco_evaluation.py    COCO mAP over a data loader (any number of processes); the summary table
label_mapping.py      a model's labels -> the data's categories (by original id or name)
per_class_report.py   per-class AP, confusion matrix and precision-recall curves (PNG)
evaluate_command.py   `detrkit evaluate`: COCO evaluation of a model on a data set, with the report
"""

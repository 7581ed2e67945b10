"""Training helpers behind scripts/train.py, evaluate.py and predict.py (one concept per file).

config.py      TrainConfig: YAML/JSON file + command-line overrides, per-model recipe defaults
models.py      --model (preset / folder / Hub id) -> model + processor; class-head swap; backbone policy
data.py        --data (built-in / COCO folder / datasets / imagefolder) -> datasets and loaders
optim.py       AdamW parameter groups (backbone and deformable projections at x0.1) and LR schedules
checkpoint.py  atomic checkpoints with optimizer, scheduler, RNG and data position; resume
evaluation.py  COCO mAP over a loader; predictions
history.py     metrics JSONL + loss/mAP plot
model_card.py  README.md of the exported model folder
loop.py        the accelerate training loop tying the above together
"""

"""detrkit.training: the `detrkit` command line and the training code behind it (one concept per file).

cli.py                the `detrkit COMMAND` dispatcher (also `python -m detrkit`)
train.py / evaluate.py / predict.py   the train, evaluate and predict commands (`main(argv)`)
errors.py             user mistakes -> one line and exit status 2 (`--debug` for the traceback)
config.py             TrainConfig: defaults < file < flags < --set; choices made per run (model, data, launcher)
models.py             --model (preset / folder / Hub id) -> model + processor; class-head swap; backbone policy
pretrained.py         a trained model + processor for evaluate / predict; default score threshold
data.py               --data -> datasets and loaders (the data layer: detrkit.processing)
user_transforms.py    --transforms: the user's own torchvision v2 transforms
optim.py              AdamW parameter groups (backbone and deformable projections at x0.1) and LR schedules
checkpoint.py         atomic checkpoints with optimizer, scheduler, EMA, RNG and data position; resume
loop.py               the accelerate training loop tying the above together (EMA, patience, export)
evaluation.py         COCO mAP over a loader; predictions
label_mapping.py      a model's labels -> the data's categories (by original id or name)
evaluation_report.py  per-class AP, confusion matrix and precision-recall curves (PNG)
predictions.py        detections as JSON and drawn
history.py            metrics JSONL + loss/mAP plot
model_card.py         the exported card: measured metrics, base_model, datasets, model-index
sharing.py            --push-to-hub
hf_trainer.py         transformers' Trainer with detrkit's data and metric
"""

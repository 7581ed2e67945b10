"""detrkit.training: `detrkit train` and the training code behind it (one concept per file). Evaluation and
the drawings of predictions come from detrkit.inference; the command line's dispatcher from detrkit.cli.

train.py              the train command (`main(argv)`) and `train(config)`, detection or segmentation
config.py             TrainConfig: defaults < file < flags < --set; choices made per run (model, data, launcher)
models.py             --model (preset / folder / Hub id) -> model + processor; class-head swap; backbone policy
detection_data.py     --data -> datasets and loaders (the data layer: detrkit.data)
user_transforms.py    --transforms: the user's own torchvision v2 transforms
optim.py              AdamW parameter groups (backbone and deformable projections at x0.1) and LR schedules
checkpoint.py         atomic checkpoints with optimizer, scheduler, EMA, RNG and data position; resume
task.py               what a task gives the loop: model, training batches, loss, evaluation
loop.py               the one training loop, every task: accumulation, checkpoints, resume, EMA, patience, time guard
run_folder.py         the run folder (never an earlier run's checkpoints overwritten unless asked) and accelerator
accelerate_device.py  --device handed to accelerate (cpu=, CUDA_VISIBLE_DEVICES for cuda:N)
sampling.py           data order and augmentation drawn from (seed, epoch): exact resume
detection.py          the detection task; its run and export (model, card, metrics.json)
distillation.py       ACT's MTKD: the detection task's loss with an exact teacher
segmentation.py       --task panoptic|instance: the paper's two steps (detector, then mask head), each a task
segmentation_data.py / segmentation_model.py / segmentation_evaluation.py / panoptic_drawing.py   its parts
frozen_detector_cache.py   the mask-head step's batches: the frozen detector's outputs, computed once
history.py            metrics JSONL + loss/mAP plot
run_card.py           the exported model card of a run: measured metrics, base_model, datasets, model-index
sharing.py            --push-to-hub
hf_trainer.py         transformers' Trainer with detrkit's data and metric
"""

"""Training detrkit models with transformers' `Trainer` instead of scripts/train.py.

Three things differ from a text model, and each has a one-line answer:

1. Items carry a list of per-image label dicts, not a tensor column: `remove_unused_columns=False` and
   `data_collator=DetectionCollator(processor)` (pads the images, keeps `labels` a list).
2. Evaluation batches differ in image size and boxes per image, so they cannot be concatenated:
   `eval_do_concat_batches=False` (predictions and labels stay per batch).
3. Only `logits` and `pred_boxes` are needed for the metric; the other outputs (loss terms, auxiliary and
   hidden states) would be gathered for nothing: pass `ignore_keys_for_eval=EVAL_IGNORE_KEYS` to `train()` and
   `ignore_keys=EVAL_IGNORE_KEYS` to `evaluate()`.

    from transformers import Trainer, TrainingArguments
    from detrkit.data import DetectionCollator, DetectionDataset
    from detrkit.training.hf_trainer import EVAL_IGNORE_KEYS, TrainerCocoMetric

    args = TrainingArguments("out", per_device_train_batch_size=8, learning_rate=1e-4, weight_decay=1e-4,
                             max_grad_norm=0.1, remove_unused_columns=False, eval_do_concat_batches=False,
                             eval_strategy="epoch", metric_for_best_model="map", load_best_model_at_end=True,
                             save_strategy="epoch")
    trainer = Trainer(model, args, train_dataset=DetectionDataset(train_records, processor, transforms),
                      eval_dataset=DetectionDataset(val_records, processor),
                      data_collator=DetectionCollator(processor),
                      compute_metrics=TrainerCocoMetric(processor, train_records.id2label))
    trainer.train(ignore_keys_for_eval=EVAL_IGNORE_KEYS)

Trainer's optimizer has one learning rate; for the papers' per-group rates (backbone x0.1, deformable sampling
offsets x0.1) pass `optimizers=(build_optimizer(model, lr), None)` from detrkit.training.optim.
"""
from __future__ import annotations

import numpy as np
import torch

from detrkit.metrics.coco_ap import CocoEvaluator

# Every output field of DETR / Deformable DETR detection outputs except the two the metric reads.
EVAL_IGNORE_KEYS = [
    "loss_dict", "auxiliary_outputs", "last_hidden_state", "decoder_hidden_states", "decoder_attentions",
    "cross_attentions", "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions",
    "init_reference_points", "intermediate_hidden_states", "intermediate_reference_points", "enc_outputs_class",
    "enc_outputs_coord_logits",
]


class _Outputs:
    """What post_process_object_detection reads, from a Trainer prediction batch."""

    def __init__(self, logits, pred_boxes):
        self.logits, self.pred_boxes = torch.as_tensor(np.asarray(logits)), torch.as_tensor(np.asarray(pred_boxes))


class TrainerCocoMetric:
    """`compute_metrics` for Trainer: COCO mAP (keys map, map_50, ..., as detrkit's training loop reports)."""

    def __init__(self, processor, id2label: dict):
        self.processor, self.id2label = processor, {int(k): v for k, v in id2label.items()}

    def __call__(self, eval_prediction) -> dict:
        evaluator = CocoEvaluator(self.id2label)
        for batch_outputs, batch_labels in zip(eval_prediction.predictions, eval_prediction.label_ids):
            if len(batch_outputs) != 2:
                raise ValueError(f"expected (logits, pred_boxes) per batch, got {len(batch_outputs)} arrays: pass "
                                 "ignore_keys(_for_eval)=EVAL_IGNORE_KEYS and eval_do_concat_batches=False")
            logits, pred_boxes = batch_outputs
            sizes = torch.as_tensor(np.stack([np.asarray(t["orig_size"]) for t in batch_labels]))
            detections = self.processor.post_process_object_detection(_Outputs(logits, pred_boxes), threshold=0.0,
                                                                      target_sizes=sizes)
            evaluator.update(detections, list(batch_labels))
        metrics = evaluator.compute()
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

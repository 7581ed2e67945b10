"""A short transformers.Trainer run with detrkit's dataset, collator and COCO metric (the recipe in
scripts/detrkit/training/hf_trainer.py), whose mAP agrees with detrkit's own evaluation of the same model."""
import pytest
import torch

from detrkit.modeling import DetrForObjectDetection, config_from_preset
from detrkit.data import DetectionCollator, DetectionDataset
from detrkit.processing import DetrImageProcessor
from detrkit.inference.coco_evaluation import coco_metric, predict
from detrkit.training.config import TrainConfig
from detrkit.training.detection_data import load_split, resolve_source
from detrkit.training.hf_trainer import EVAL_IGNORE_KEYS, TrainerCocoMetric
from detrkit.training.optim import build_optimizer


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    config = TrainConfig(data="shapes-b", data_cache=str(tmp_path_factory.mktemp("data")), image_size=64,
                         max_train_samples=8, max_eval_samples=4)
    source = resolve_source(config, log=lambda *_: None)
    return load_split(source, "train", config), load_split(source, "val", config)


@pytest.mark.slow
def test_trainer_trains_and_reports_coco_map(records, tmp_path):
    from transformers import Trainer, TrainingArguments

    train_records, val_records = records
    torch.manual_seed(0)
    model = DetrForObjectDetection(config_from_preset(
        "detr-resnet-50", backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_queries=10, id2label=train_records.id2label, label2id=train_records.label2id))
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 107})
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=2, max_steps=3,
                             learning_rate=1e-4, max_grad_norm=0.1, remove_unused_columns=False,
                             eval_do_concat_batches=False, report_to=[], save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model, args, train_dataset=DetectionDataset(train_records, processor),
                      eval_dataset=DetectionDataset(val_records, processor),
                      data_collator=DetectionCollator(processor),
                      compute_metrics=TrainerCocoMetric(processor, train_records.id2label),
                      optimizers=(build_optimizer(model, 1e-4), None))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = trainer.train(ignore_keys_for_eval=EVAL_IGNORE_KEYS)
    assert result.global_step == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    metrics = trainer.evaluate(ignore_keys=EVAL_IGNORE_KEYS)
    for key in ("eval_loss", "eval_map", "eval_map_50", "eval_map_75", "eval_map_small", "eval_mar_100"):
        assert key in metrics, sorted(metrics)
    # the same model scored by detrkit's loop (ground truth from the records, not the processor's labels)
    loader = torch.utils.data.DataLoader(DetectionDataset(val_records, processor), batch_size=2,
                                         collate_fn=DetectionCollator(processor))
    ours = coco_metric(val_records, predict(model, loader, processor))
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert metrics[f"eval_{key}"] == pytest.approx(ours[key], abs=1e-6), key


def test_trainer_metric_explains_missing_ignore_keys(records):
    from transformers import EvalPrediction

    metric = TrainerCocoMetric(DetrImageProcessor(), records[0].id2label)
    bad = EvalPrediction(predictions=[(torch.zeros(1, 2, 6), torch.zeros(1, 2, 4), torch.zeros(1))],
                         label_ids=[[{"orig_size": [64, 64]}]])
    with pytest.raises(ValueError, match="EVAL_IGNORE_KEYS"):
        metric(bad)


def test_trainer_metric_scores_perfect_predictions_as_1(records):
    """Logits and boxes that reproduce the ground truth give AP 1: the per-batch conversion is right."""
    from transformers import EvalPrediction

    val_records = records[1]
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 107})
    num_labels = len(val_records.id2label)
    batches, labels = [], []
    for start in (0, 2):
        items = [DetectionDataset(val_records, processor)[i] for i in range(start, start + 2)]
        batch_labels = DetectionCollator(processor)(items)["labels"]
        queries = 1 + max(len(t["class_labels"]) for t in batch_labels)
        logits = torch.full((2, queries, num_labels + 1), -10.0)
        logits[..., -1] = 10.0  # unmatched queries say "no object"
        boxes = torch.full((2, queries, 4), 0.5)
        for b, target in enumerate(batch_labels):
            n = len(target["class_labels"])
            logits[b, torch.arange(n), target["class_labels"]] = 10.0
            logits[b, torch.arange(n), -1] = -10.0
            boxes[b, :n] = target["boxes"]
        batches.append((logits.numpy(), boxes.numpy()))
        labels.append([{k: v.numpy() for k, v in t.items()} for t in batch_labels])
    metrics = TrainerCocoMetric(processor, val_records.id2label)(EvalPrediction(predictions=batches, label_ids=labels))
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map_75"] == pytest.approx(1.0)

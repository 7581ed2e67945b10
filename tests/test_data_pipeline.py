"""Records -> DetectionDataset -> DetectionCollator -> a batch the models and the metric take."""
import pickle

import pytest
import torch

from detrkit.data.augmentations import AugmentationConfig, detr_train_transforms
from detrkit.data.builtin.shapes import write_builtin_dataset
from detrkit.data.collator import DetectionCollator
from detrkit.data.dataset import DetectionDataset
from detrkit.data.layouts import load_detection_data
from detrkit.metrics.coco_ap import coco_evaluate
from detrkit.processing import DetrImageProcessor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    shapes = write_builtin_dataset("shapes-a", tmp_path_factory.mktemp("a"), num_train=8, num_val=4, image_size=80)
    recipe = AugmentationConfig.for_image_size(80)
    processor = DetrImageProcessor(size=recipe.eval_size)
    return load_detection_data(shapes.root, split="val"), processor, recipe


def test_eval_items_match_the_records(setup):
    records, processor, _ = setup
    dataset = DetectionDataset(records, processor)
    item = dataset[1]
    record = records[1]
    assert item["pixel_values"].shape == (3, 80, 80)
    labels = item["labels"]
    assert labels["image_id"].item() == record.image_id and labels["orig_size"].tolist() == [80, 80]
    assert labels["class_labels"].tolist() == [a["category_id"] for a in record.annotations]
    x, y, w, h = torch.tensor([a["bbox"] for a in record.annotations]).unbind(-1)
    expected = torch.stack([x + w / 2, y + h / 2, w, h], -1) / 80
    assert torch.allclose(labels["boxes"], expected, atol=1e-6)


def test_collator_pads_and_keeps_labels_as_a_list(setup):
    records, processor, recipe = setup
    train = DetectionDataset(records, processor, detr_train_transforms(recipe))
    torch.manual_seed(0)
    items = [train[i] for i in range(4)]
    collate = pickle.loads(pickle.dumps(DetectionCollator(processor)))  # Trainer/DataLoader workers pickle it
    batch = collate(items)
    height = max(i["pixel_values"].shape[1] for i in items)
    width = max(i["pixel_values"].shape[2] for i in items)
    assert batch["pixel_values"].shape == (4, 3, height, width)
    assert isinstance(batch["labels"], list) and len(batch["labels"]) == 4
    for k, item in enumerate(items):
        h, w = item["pixel_values"].shape[1:]
        assert batch["pixel_mask"][k].sum() == h * w and batch["pixel_mask"][k, :h, :w].all()
        assert torch.equal(batch["pixel_values"][k, :, :h, :w], item["pixel_values"])
        assert torch.equal(batch["labels"][k]["class_labels"], item["labels"]["class_labels"])
        boxes = batch["labels"][k]["boxes"]
        assert ((boxes >= 0) & (boxes <= 1)).all()
    assert "labels" not in collate([{"pixel_values": items[0]["pixel_values"]}])
    with pytest.raises(ValueError, match="no 'pixel_values'"):
        collate([{"labels": {}}])


def test_a_dataloader_with_workers_and_the_metric_round_trip(setup):
    records, processor, _ = setup
    loader = torch.utils.data.DataLoader(DetectionDataset(records, processor), batch_size=3, num_workers=1,
                                         collate_fn=DetectionCollator(processor))
    predictions, references = [], []
    for batch in loader:
        for labels in batch["labels"]:
            # "predict" the ground truth back in original pixels, as post-processing would
            height, width = labels["orig_size"].tolist()
            cx, cy, w, h = (labels["boxes"] * torch.tensor([width, height, width, height])).unbind(-1)
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            predictions.append({"scores": torch.ones(len(boxes)), "labels": labels["class_labels"], "boxes": boxes})
            references.append(labels)
    assert len(predictions) == len(records)
    results = coco_evaluate(predictions, [r.target() for r in records], records.id2label)
    assert results["map"] == pytest.approx(1.0)
    assert coco_evaluate(predictions, references, records.id2label)["map"] == pytest.approx(1.0)


class TinyDetector(torch.nn.Module):
    """Stands in for a detector: the loss touches pixels, mask and every label field the models read."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values, pixel_mask, labels):
        assert isinstance(labels, list) and all(l["boxes"].ndim == 2 for l in labels)
        boxes = torch.cat([l["boxes"] for l in labels]).sum() + sum(l["class_labels"].sum() for l in labels)
        return {"loss": self.weight * (pixel_values * pixel_mask[:, None]).mean() + 0 * boxes}


def test_hf_trainer_runs_with_the_collator(setup, tmp_path):
    from transformers import Trainer, TrainingArguments

    records, processor, recipe = setup
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", dataloader_num_workers=0)
    trainer = Trainer(model=TinyDetector(), args=args, data_collator=DetectionCollator(processor),
                      train_dataset=DetectionDataset(records, processor, detr_train_transforms(recipe)))
    assert trainer.train().global_step == 2

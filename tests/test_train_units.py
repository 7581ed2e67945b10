"""Fast checks of the training helpers: configuration, the papers' parameter groups and schedules, checkpoint
loading checks, reproducible sampling, history files."""
import copy
import json
import random

import pytest
import torch

from detrkit.families import DEFORMABLE_DETR, DETR
from detrkit.training.config import TrainConfig, apply_overrides, parse_config, resolve_recipe
from detrkit.training.history import append_record, read_history, truncate_history
from detrkit.training.models import apply_backbone_policy, check_loading, resolve_policy
from detrkit.training.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups
from detrkit.training.sampling import EpochShuffleSampler, SeededAugmentation


def test_no_arguments_is_the_demo_fine_tuning():
    config = parse_config([])
    assert config.model == "checkpoints/deformable-detr-shapes-a" and config.data == "shapes-b"
    assert config.output_dir == "outputs/demo"
    assert config.fallback_model.endswith("pretrain_shapes_a.yaml")


def test_file_then_flags_then_set_overrides(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"model": "detr-resnet-50", "data": "shapes-b", "batch_size": 4, "lr": 1e-3,
                                "model_overrides": {"d_model": 64}}))
    config = parse_config(["--config", str(file), "--batch-size", "16", "--set", "lr=2e-4",
                           "--set", "model_overrides.num_queries=50", "--scales", "[96, 128]"])
    assert config.batch_size == 16 and config.lr == 2e-4 and config.scales == [96, 128]
    assert config.model_overrides == {"d_model": 64, "num_queries": 50}
    assert config.epochs == TrainConfig().epochs  # untouched keys keep the defaults, not the demo file's


def test_bad_keys_are_named():
    with pytest.raises(ValueError, match="unknown config key.*'bacth_size'"):
        parse_config(["--set", "bacth_size=3"])
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides({}, ["lr"])


def test_recipe_defaults_per_model():
    config = TrainConfig(epochs=12)
    assert resolve_recipe(config, DETR).lr == 1e-4
    deformable = resolve_recipe(config, DEFORMABLE_DETR)
    assert deformable.lr == 2e-4 and deformable.lr_drop_epoch == 10 and deformable.eval_batch_size == config.batch_size


@pytest.fixture(scope="module")
def tiny_deformable():
    from detrkit.modeling import DeformableDetrForObjectDetection, config_from_preset

    return DeformableDetrForObjectDetection(config_from_preset(
        "deformable-detr", backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        num_queries=5, num_labels=3, num_feature_levels=2))


def test_parameter_groups_follow_the_paper(tiny_deformable):
    groups = {g["name"]: g for g in parameter_groups(tiny_deformable, lr=2e-4)}
    assert groups["main"]["lr"] == 2e-4
    assert groups["backbone"]["lr"] == pytest.approx(2e-5) and groups["linear_proj"]["lr"] == pytest.approx(2e-5)
    names = {id(p): n for n, p in tiny_deformable.named_parameters()}
    assert all("backbone" in names[id(p)] for p in groups["backbone"]["params"])
    proj = {names[id(p)] for p in groups["linear_proj"]["params"]}
    assert any("sampling_offsets" in n for n in proj) and any("reference_points" in n for n in proj)
    grouped = sum(len(g["params"]) for g in groups.values())
    assert grouped == sum(p.requires_grad for p in tiny_deformable.parameters())  # frozen stem/layer1 left out
    assert all(g["weight_decay"] == 1e-4 for g in groups.values())


def test_optimizer_is_fused_where_torch_can_and_steps_as_adamw(tiny_deformable):
    optimizer = build_optimizer(tiny_deformable, lr=2e-4)
    assert optimizer.defaults["fused"]  # on the CPU too, where torch left alone takes its per-tensor path
    assert not build_optimizer(tiny_deformable, lr=2e-4, device="meta").defaults["fused"]
    reference = torch.optim.AdamW(parameter_groups(copy.deepcopy(tiny_deformable), lr=2e-4), lr=2e-4,
                                  foreach=False)
    params = [p for p in tiny_deformable.parameters() if p.requires_grad]
    reference_params = [p for g in reference.param_groups for p in g["params"]]
    fused_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len(reference_params) == len(fused_params)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for fused, ref in zip(fused_params, reference_params):
            fused.grad = torch.randn(fused.shape, generator=generator)
            ref.grad = fused.grad.clone()
        optimizer.step()
        reference.step()
    for fused, ref in zip(fused_params, reference_params):
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)


def test_backbone_policy(tiny_deformable):
    assert resolve_policy("auto", pretrained=True) == "pretrained"
    assert resolve_policy("auto", pretrained=False) == "scratch"
    note = apply_backbone_policy(tiny_deformable, "pretrained")
    assert note.startswith("pretrained") and "5/20" in note
    assert not any(p.requires_grad for n, p in tiny_deformable.named_parameters() if ".layer1." in n)
    assert apply_backbone_policy(tiny_deformable, "scratch").startswith("scratch")
    assert all(p.requires_grad for p in tiny_deformable.parameters())


def test_schedules():
    assert [lr_factor(s, 100, "step", drop_step=60) for s in (0, 59, 60, 99)] == [1, 1, 0.1, 0.1]
    assert lr_factor(0, 100, "cosine") == 1 and lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(4, 100, "step", warmup_steps=10) == pytest.approx(0.5)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, 10, "step", drop_step=3)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == [pytest.approx(0.1)]
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(optimizer, 10, "linear")


def test_loading_check_allows_only_the_class_head():
    head_only = {"mismatched_keys": [("class_embed.0.weight", (12, 8), (5, 8))], "missing_keys": []}
    check_loading(head_only, "ckpt", allow_head=True)
    with pytest.raises(ValueError, match="besides the class head"):
        check_loading(head_only, "ckpt", allow_head=False)
    with pytest.raises(ValueError, match="input_proj"):
        check_loading({"mismatched_keys": [], "missing_keys": ["model.input_proj.0.0.weight"]}, "ckpt", True)


def test_sampling_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(20, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(20))
    sampler.set_epoch(0)
    assert list(sampler) == first

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2), random.random()

    data = SeededAugmentation(Noisy(), seed=0)
    a = data[1]
    torch.manual_seed(123)
    random.seed(7)
    state = torch.get_rng_state()
    b = data[1]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (dropout's) is left alone
    data.set_epoch(1)
    assert not torch.equal(data[1][0], a[0])


def test_segmentation_steps_shuffle_as_detection_does():
    from detrkit.training.segmentation import train_loader

    loader = train_loader(list(range(20)), list, TrainConfig(model="m", data="d", batch_size=4, seed=3), 0)
    assert isinstance(loader.sampler, EpochShuffleSampler)
    loader.sampler.set_epoch(2)
    reference = EpochShuffleSampler(20, seed=3)
    reference.set_epoch(2)
    assert [i for batch in loader for i in batch] == list(reference)


def test_history_survives_a_resume(tmp_path):
    path = tmp_path / "history.jsonl"
    for epoch in (1, 2, 3):
        append_record(path, {"epoch": epoch, "train_loss": 1.0 / epoch})
    truncate_history(path, 2)  # killed after epoch 3's record, before its checkpoint
    append_record(path, {"epoch": 3, "train_loss": 0.25})
    assert [r["train_loss"] for r in read_history(path)] == [1.0, 0.5, 0.25]


def test_numbers_without_a_dot_are_numbers(tmp_path):
    file = tmp_path / "c.yaml"
    # YAML 1.1 would keep 2e-4 a string
    file.write_text("model: detr-resnet-50\ndata: shapes-b\nlr: 2e-4\nweight_decay: 1e-4\nepochs: 3\n")
    config = parse_config(["--config", str(file), "--set", "clip_grad_norm=1e-1"])
    assert (config.lr, config.weight_decay, config.clip_grad_norm, config.epochs) == (2e-4, 1e-4, 0.1, 3)
    with pytest.raises(ValueError, match="--batch-size eight: config key 'batch_size': expected a number"):
        parse_config(["--batch-size", "eight"])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        parse_config(["--model", "detr-resnet-50", "--data", "shapes-b", "--epochs", "-3"])
    with pytest.raises(ValueError, match="--data was given without --model"):
        parse_config(["--data", "shapes-b"])


def test_colour_jitter_and_user_transforms(tmp_path):
    from torchvision.transforms import v2

    from detrkit.data.augmentations import AugmentationConfig, augment, detr_train_transforms
    from detrkit.training.user_transforms import load_user_transforms, with_user_transforms

    image = torch.full((3, 40, 60), 100, dtype=torch.uint8)
    image[:, 10:20, 10:30] = 200
    annotations = [{"bbox": [10.0, 10.0, 20.0, 10.0], "category_id": 1}]
    fixed = dict(scales=(40,), max_size=60, flip_prob=0.0, crop_prob=0.0)
    torch.manual_seed(0)
    plain, kept = augment(detr_train_transforms(AugmentationConfig(**fixed)), image, annotations)
    jittered, moved = augment(detr_train_transforms(AugmentationConfig(**fixed, color_jitter=0.5)), image, annotations)
    assert torch.equal(plain, image) and not torch.equal(jittered, image)  # colours change, geometry does not
    assert moved[0]["bbox"] == kept[0]["bbox"] == [10.0, 10.0, 20.0, 10.0]
    with pytest.raises(ValueError, match="color_jitter"):
        AugmentationConfig(color_jitter=2.0)

    user = tmp_path / "my_transforms.py"
    user.write_text("from torchvision.transforms import v2\n"
                    "def build():\n    return v2.RandomHorizontalFlip(p=1.0)\n"
                    "FLIP = v2.RandomHorizontalFlip(p=1.0)\n")
    for spec in (f"{user}:build", f"{user}:FLIP"):
        pipeline = with_user_transforms(detr_train_transforms(AugmentationConfig(**fixed)), spec)
        _, flipped = augment(pipeline, image, annotations)
        assert flipped[0]["bbox"] == [30.0, 10.0, 20.0, 10.0], spec  # the user's flip ran, boxes followed
    assert isinstance(load_user_transforms("torchvision.transforms.v2:RandomHorizontalFlip"), v2.Transform)
    with pytest.raises(ValueError, match="expected 'module:name'"):
        load_user_transforms("my_transforms.py")
    with pytest.raises(ValueError, match="has no 'nothing'"):
        load_user_transforms(f"{user}:nothing")
    with pytest.raises(FileNotFoundError):
        load_user_transforms(f"{tmp_path}/missing.py:build")


def test_card_metadata_names_base_model_datasets_and_metrics(tmp_path):
    from types import SimpleNamespace

    from huggingface_hub import metadata_load

    from detrkit.training.run_card import write_run_card

    (tmp_path / "run" / "model").mkdir(parents=True)
    card = tmp_path / "run" / "model" / "README.md"
    card.write_text("---\nlicense: apache-2.0\ntags: [detrkit]\n---\n# A detector\n\n"
                    "## Training and evaluation\n\nTBD\n")
    config = resolve_recipe(TrainConfig(model="facebook/detr-resnet-50", data="cppe-5", epochs=3, image_size=800,
                                        eval_split="test"), DETR)
    loaded = SimpleNamespace(source="facebook/detr-resnet-50", hub_id="facebook/detr-resnet-50", backbone_note="x")
    data = SimpleNamespace(id2label={0: "Coverall", 1: "Mask"}, train=[0] * 10, eval_records=[0] * 4)
    metrics = {"map": 0.25, "map_50": 0.5, "map_75": 0.2, "map_small": -1.0, "map_medium": 0.1, "map_large": 0.3}
    write_run_card(card.parent, config, loaded, data, metrics, [{"epoch": 1, "train_loss": 2.0, "map": 0.25}])
    meta = metadata_load(card)
    assert meta["license"] == "apache-2.0" and meta["tags"] == ["detrkit"]  # the template's header is kept
    assert (meta["library_name"], meta["pipeline_tag"]) == ("transformers", "object-detection")
    assert meta["base_model"] == "facebook/detr-resnet-50" and meta["datasets"] == ["cppe-5"]
    index = meta["model-index"][0]
    assert index["name"] == "run"
    result = index["results"][0]
    assert result["dataset"] == {"name": "cppe-5", "type": "cppe-5", "split": "test"}
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"map": 0.25, "map_50": 0.5, "map_75": 0.2, "map_medium": 0.1, "map_large": 0.3}  # no -1
    assert "| AP | 0.2500 |" in card.read_text() and "TBD" not in card.read_text()


def test_every_shipped_config_parses():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "scripts" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        config = parse_config(["--config", str(path)])
        assert config.model and config.data and config.output_dir, path.name


def test_remote_code_only_when_asked(monkeypatch):
    import transformers

    from detrkit.inference import loading
    from detrkit.training import models

    seen = []

    def from_pretrained(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code", False))
        if not kwargs.get("trust_remote_code"):
            raise ValueError(f"The repository {name} contains custom code ... pass `trust_remote_code=True`")
        raise OSError("stop here: loading itself is not under test")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForObjectDetection, "from_pretrained", from_pretrained)
    def train_load(trust):
        return models.resolve_model(TrainConfig(model="someone/custom", data="d", trust_remote_code=trust))

    for load in (train_load, lambda trust: loading.load_for_inference("someone/custom", trust_remote_code=trust)):
        with pytest.raises(ValueError, match="needs its own code from the Hub.*add --trust-remote-code"):
            load(False)
        with pytest.raises(OSError, match="stop here"):
            load(True)
    assert seen == [False, True, False, True]

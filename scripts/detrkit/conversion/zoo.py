"""The official checkpoints detrkit converts: paper figures (COCO val2017, from the official READMEs), file names,
the converted folder's name and the matching preset. Parameters and GFLOPs are detrkit's own measurement
(`python -m detrkit.conversion.measure`), kept in the README table, not here."""

from dataclasses import dataclass, field

DETR_CITATION = """@inproceedings{carion2020end,
  title={End-to-End Object Detection with Transformers},
  author={Carion, Nicolas and Massa, Francisco and Synnaeve, Gabriel and Usunier, Nicolas and Kirillov, Alexander and Zagoruyko, Sergey},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2020}
}"""
DEFORMABLE_DETR_CITATION = """@inproceedings{zhu2021deformable,
  title={Deformable DETR: Deformable Transformers for End-to-End Object Detection},
  author={Zhu, Xizhou and Su, Weijie and Lu, Lewei and Li, Bin and Wang, Xiaogang and Dai, Jifeng},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2021}
}"""
CITATIONS = {"detr": DETR_CITATION, "deformable_detr": DEFORMABLE_DETR_CITATION}  # by detrkit.families name
DETR_RELEASES = "https://dl.fbaipublicfiles.com/detr/"
DEFORMABLE_RELEASES = "https://github.com/fundamentalvision/Deformable-DETR#main-results"


@dataclass(frozen=True)
class ZooEntry:
    folder: str  # the converted folder's (and Hub repository's) name
    official_file: str  # DETR: the released file; Deformable DETR: the config script it was trained with
    preset: str | None  # detrkit preset of the same architecture (None: none yet, e.g. panoptic)
    title: str
    paper_metrics: dict = field(default_factory=dict)  # COCO val2017, as the official README reports
    family: str = "detr"  # the official checkpoint's layout: "detr", "detr_panoptic" or "deformable_detr"

    @property
    def citation(self) -> str:
        return CITATIONS[self.family.removesuffix("_panoptic")]

    @property
    def source(self) -> str:
        return DETR_RELEASES + self.official_file if self.family.startswith("detr") else DEFORMABLE_RELEASES


ZOO = [
    ZooEntry("detr-resnet-50", "detr-r50-e632da11.pth", "detr-resnet-50", "DETR R50", {"AP": 42.0}),
    ZooEntry("detr-resnet-50-dc5", "detr-r50-dc5-f0fb7ef5.pth", "detr-resnet-50-dc5", "DETR R50-DC5", {"AP": 43.3}),
    ZooEntry("detr-resnet-101", "detr-r101-2c7b67e5.pth", "detr-resnet-101", "DETR R101", {"AP": 43.5}),
    ZooEntry("detr-resnet-101-dc5", "detr-r101-dc5-a2e86def.pth", "detr-resnet-101-dc5", "DETR R101-DC5",
             {"AP": 44.9}),
    ZooEntry("detr-resnet-50-panoptic", "detr-r50-panoptic-00ce5173.pth", None, "DETR R50 panoptic",
             {"AP": 38.8, "PQ": 43.4}, "detr_panoptic"),
    ZooEntry("detr-resnet-50-dc5-panoptic", "detr-r50-dc5-panoptic-da08f1b1.pth", None, "DETR R50-DC5 panoptic",
             {"AP": 40.2, "PQ": 44.6}, "detr_panoptic"),
    ZooEntry("detr-resnet-101-panoptic", "detr-r101-panoptic-40021d53.pth", None, "DETR R101 panoptic",
             {"AP": 40.1, "PQ": 45.1}, "detr_panoptic"),
    ZooEntry("deformable-detr-single-scale", "r50_deformable_detr_single_scale.sh", "deformable-detr-single-scale",
             "Deformable DETR R50 single-scale", {"AP": 39.4}, "deformable_detr"),
    ZooEntry("deformable-detr-single-scale-dc5", "r50_deformable_detr_single_scale_dc5.sh",
             "deformable-detr-single-scale-dc5", "Deformable DETR R50 single-scale DC5", {"AP": 41.5},
             "deformable_detr"),
    ZooEntry("deformable-detr", "r50_deformable_detr.sh", "deformable-detr", "Deformable DETR R50", {"AP": 44.5},
             "deformable_detr"),
    ZooEntry("deformable-detr-box-refine", "r50_deformable_detr_plus_iterative_bbox_refinement.sh",
             "deformable-detr-box-refine", "Deformable DETR R50 + iterative box refinement", {"AP": 46.2},
             "deformable_detr"),
    ZooEntry("deformable-detr-two-stage",
             "r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh",
             "deformable-detr-two-stage", "Deformable DETR R50 ++ two-stage", {"AP": 46.9}, "deformable_detr"),
]


def zoo_entry_for(config, panoptic: bool = False) -> ZooEntry | None:
    """The zoo entry of `config`'s architecture: the preset with the same fields, or for a panoptic model the
    panoptic file with the same backbone and dilation (panoptic models have no preset)."""
    from detrkit.modeling import config_from_preset

    if panoptic:
        name = f"detr-{config.backbone.replace('resnet', 'resnet-')}{'-dc5' if config.dilation else ''}-panoptic"
        return next((e for e in ZOO if e.folder == name and config.num_labels == 250
                     and (config.d_model, config.encoder_layers, config.num_queries) == (256, 6, 100)), None)
    fields = ("model_type", "backbone", "dilation", "num_feature_levels", "with_box_refine", "two_stage",
              "d_model", "encoder_layers", "decoder_layers", "num_queries")
    for entry in ZOO:
        if entry.preset is None:
            continue
        preset = config_from_preset(entry.preset)
        if all(getattr(preset, f, None) == getattr(config, f, None) for f in fields):
            return entry
    return None

"""Conversion of the official DETR / Deformable DETR checkpoints (facebookresearch/detr,
fundamentalvision/Deformable-DETR) into save_pretrained folders."""

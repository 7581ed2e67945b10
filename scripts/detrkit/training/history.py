"""Metrics history: one JSON line per epoch (appended, so a resumed run continues the file) and its plot."""
from __future__ import annotations

import json
from pathlib import Path


def append_record(path: str | Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_history(path: str | Path) -> list[dict]:
    """Records in file order; a later record for the same epoch (a resumed run) replaces the earlier one."""
    path = Path(path)
    if not path.exists():
        return []
    by_epoch = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def truncate_history(path: str | Path, last_epoch: int) -> None:
    """Drop records after `last_epoch` (written by a run that was killed before its next checkpoint)."""
    records = [r for r in read_history(path) if r["epoch"] <= last_epoch]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def plot_history(records: list[dict], path: str | Path) -> None:
    """Training loss and mAP (AP, AP50, AP_small) per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in records]
    ax_loss.plot(epochs, [r.get("train_loss") for r in records], marker="o", label="train loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_loss.legend()
    for key, label in (("map", "AP"), ("map_50", "AP50"), ("map_small", "AP small")):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and r[key] >= 0]  # -1: no such GT
        if points:
            ax_map.plot(*zip(*points), marker="o", label=label)
    ax_map.set(xlabel="epoch", ylabel="COCO mAP", title="evaluation", ylim=(0, 1))
    if ax_map.lines:  # no evaluation yet (e.g. eval_every > epochs done): nothing to label
        ax_map.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

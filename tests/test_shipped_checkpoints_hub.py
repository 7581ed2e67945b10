"""The checkpoints the repository ships load like every folder detrkit saves: with plain transformers and
trust_remote_code, in a process where detrkit cannot be imported, giving detrkit's own outputs."""
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_without_detrkit

from detrkit.deploy.refresh_code import code_changes, command_line
from detrkit.inference.loading import load_for_inference

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["checkpoints/detr-shapes-a", "checkpoints/deformable-detr-shapes-a"]

PLAIN_TRANSFORMERS = textwrap.dedent(
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    folder, expected = sys.argv[1], torch.load(sys.argv[2])
    model = AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        outputs = model(expected["pixel_values"])
    torch.testing.assert_close(outputs.logits, expected["logits"])
    torch.testing.assert_close(outputs.pred_boxes, expected["pred_boxes"])
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    assert hasattr(processor, "post_process_object_detection")
    print("PLAIN-OK", type(model).__name__)
    """
)


@pytest.mark.parametrize("folder", SHIPPED)
@pytest.mark.slow
def test_shipped_checkpoint_loads_with_plain_transformers(folder, tmp_path):
    model, _ = load_for_inference(str(ROOT / folder))
    pixel_values = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(pixel_values)
    torch.save({"pixel_values": pixel_values, "logits": outputs.logits, "pred_boxes": outputs.pred_boxes},
               tmp_path / "expected.pt")
    result = run_without_detrkit(PLAIN_TRANSFORMERS, ROOT / folder, tmp_path / "expected.pt", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "PLAIN-OK" in result.stdout


@pytest.mark.parametrize("folder", SHIPPED)
def test_shipped_code_is_the_packages_code(folder):
    """The code files next to the shipped weights are exactly the modeling / processing files they need today (the
    set `detrkit refresh-code` computes from auto_map), so the remote code users run is what the tests test."""
    changes = code_changes(ROOT / folder)
    assert len(changes.needed) > 10
    assert not changes, (f"{changes.describe(check=True)}\nThe shipped code is not the package's. To rewrite it "
                         f"(weights untouched), run from the repository root: {command_line([changes])}")

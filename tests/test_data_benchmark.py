"""scripts/benchmarks/benchmark_data.py runs end to end at a small scale (its figures are not checked: the machine is shared)."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmarks" / "benchmark_data.py"


@pytest.mark.slow
@pytest.mark.e2e
def test_benchmark_data_runs_at_small_scale(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--num-images", "2000", "--workers", "2",
                             "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "generated: 2000 images, 14541 boxes" in out  # COCO train2017's boxes per image
    for line in ("first load:", "cached load:", "records resident:", "2 workers, one pass over arrow records"):
        assert line in out, out
    assert not any(tmp_path.iterdir())  # the generated set is deleted

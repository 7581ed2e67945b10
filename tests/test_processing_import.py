"""`import detrkit.processing` loads the image processor only: not the data layer, the metrics, or pyarrow."""
import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import detrkit.processing
heavy = ("pyarrow", "detrkit.data", "detrkit.metrics", "evaluate")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(heavy))))
"""


@pytest.mark.slow
def test_processing_imports_no_data_layer_metrics_or_pyarrow(tmp_path):
    # a fresh interpreter: this test process has imported everything already
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []

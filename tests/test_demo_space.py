"""`detrkit space` writes a Space folder whose app.py serves the demo, and a detrkit wheel that holds the demo."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest
import torch

from helpers import SMALL

pytest.importorskip("gradio")

from detrkit.deploy.space import main  # noqa: E402
from detrkit.modeling import DetrConfig, DetrForObjectDetection  # noqa: E402
from detrkit.processing import DetrImageProcessor  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_space_folder_serves_the_demo(tmp_path):
    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(**SMALL, use_pretrained_backbone=False)).save_pretrained(tmp_path / "model")
    DetrImageProcessor().save_pretrained(tmp_path / "model")
    space = tmp_path / "space"
    assert main([str(tmp_path / "model"), str(space), "--title", "tiny detr"]) == 0
    assert (space / "model" / "config.json").exists() and (space / "model" / "model.safetensors").exists()
    requirements = (space / "requirements.txt").read_text().split()
    wheel = space / requirements[0].removeprefix("./")
    assert wheel.suffix == ".whl" and "gradio>=5" in requirements
    with zipfile.ZipFile(wheel) as archive:
        assert {"detrkit/deploy/demo.py", "detrkit/modeling/modeling_detr.py"} <= set(archive.namelist())
    assert "sdk: gradio" in (space / "README.md").read_text()

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 120, None
        while time.time() < deadline and process.poll() is None and page is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None, process.stdout.read() if process.poll() is not None else "no answer in 120 s"
        assert "tiny detr" in page
    finally:
        process.terminate()
        process.wait(timeout=30)

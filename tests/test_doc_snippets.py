"""Every ```bash and ```python block of README.md and docs/*.md, run exactly as written from the repository root
(as a user pastes it: bash blocks by `bash -euo pipefail -c`, Python blocks by `python -c`), the blocks of one file
in their order (a later block may read what an earlier one wrote). The snippets write only under outputs/, which
git ignores. The few blocks that cannot run here are listed in NOT_RUN_HERE with the reason and, where there is
one, the test that runs them in another form; a listed block that no longer exists fails the test, so the list
stays exact."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# an opening fence, possibly indented inside a list item, and the closing fence at the same indentation
BLOCK = re.compile(r"^( *)```(bash|python)\n(.*?)^\1```", re.M | re.S)

# The first line of a block that is not run here: why.
NOT_RUN_HERE = {
    "python3 -m pip install -e . && python3 scripts/train.py":
        "set-up command: CI (.ci/run) runs it; the main job itself is tests/test_scripts_main_job.py",
    "python3 -m pip install -e '.[test]' && python3 -m pytest -q tests":
        "set-up command: CI runs it, and it is this test suite",
    "from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline":
        "the README's Usage block: tests/test_repository_root.py::test_readme_quick_start_runs_from_the_root runs "
        "it from the root with its folder and image names pointing into a temporary folder",
    "detrkit train --model SenseTime/deformable-detr --data path/to/coco --output-dir runs/coco":
        "Hub models, your data and a Hub upload: tests/test_readme_finetune.py runs these lines as written on tiny "
        "generated sets with tiny local checkpoints for the Hub ids and a few smoke flags",
    "accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 -m detrkit train --model "
    "SenseTime/deformable-detr --data path/to/coco --output-dir runs/coco":
        "needs 4 GPUs and a second machine; the CPU form of the launch is "
        "tests/test_repository_root.py::test_accelerate_launch_trains_from_the_root",
    "python3 -m pip wheel --no-deps . -w dist && python3 -m pip install dist/detrkit-*.whl":
        "installs into the running environment, and the git URL needs the network; tests/test_package_wheel.py "
        "builds the wheel and installs it into a fresh virtual environment",
    "detrkit convert https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth detr-resnet-50-dc5/":
        "downloads the official 160 MB file; tests/test_conversion.py converts a URL served by a local http.server",
    "detrkit demo checkpoints/deformable-detr-shapes-a        # http://127.0.0.1:7860":
        "serves until stopped; tests/test_demo_browser.py drives the page and tests/test_demo_space.py serves the "
        "written Space",
}


def blocks(document: Path) -> list[tuple[str, str]]:
    """(language, code) of each bash / python block, dedented to the fence's indentation."""
    return [(language, textwrap.dedent(indent + code) if indent else code)
            for indent, language, code in BLOCK.findall(document.read_text(encoding="utf-8"))]


def first_line(code: str) -> str:
    return code.strip().splitlines()[0]


def run_block(language: str, code: str) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    # no downloads in the tests: a snippet that reaches for the Hub fails here instead of hanging
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_document_snippets_run_as_written(document):
    for language, code in blocks(document):
        if first_line(code) in NOT_RUN_HERE:
            continue
        result = run_block(language, code)
        assert result.returncode == 0, (document.name, code, (result.stdout + result.stderr)[-3000:])


def test_every_block_not_run_here_still_exists():
    first_lines = {first_line(code) for document in DOCUMENTS for _, code in blocks(document)}
    assert set(NOT_RUN_HERE) <= first_lines, set(NOT_RUN_HERE) - first_lines


def test_the_two_set_up_commands_come_first_in_the_readme():
    """They are what a fresh machine runs; CI runs them as its own steps."""
    assert [first_line(code) for _, code in blocks(ROOT / "README.md")[:2]] == list(NOT_RUN_HERE)[:2]

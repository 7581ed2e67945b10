"""detrkit: the DETR family of end-to-end object detectors for the Hugging Face ecosystem.

`detrkit` is a namespace package assembled from source roots, each holding a `detrkit/` folder: modeling/,
processing/ and kernels/ (the library that travels to the Hub) and scripts/ (the application: command line,
training, inference, data, metrics, conversion, deploy). A module's path names its import: `detrkit.training.loop`
is scripts/detrkit/training/loop.py. No top-level folder is a Python package, so from a checkout's root nothing
passes for another package (transformers imports the third-party `kernels` package).
"""
from pathlib import Path

from setuptools import setup

SOURCE_ROOTS = ["modeling", "processing", "kernels", "scripts"]


def detrkit_packages() -> dict[str, str]:
    """{import name: folder} for every package under the source roots' detrkit/ folders."""
    packages = {"detrkit": "scripts/detrkit"}  # `python -m detrkit`; no __init__.py: a namespace
    for root in SOURCE_ROOTS:
        for init in sorted(Path(root, "detrkit").rglob("__init__.py")):
            folder = init.parent
            packages[".".join(folder.relative_to(root).parts)] = folder.as_posix()
    packages["detrkit.model_cards"] = "model_cards"  # card templates (data only)
    return packages


SUBPACKAGES = detrkit_packages()

# detrkit export / visualize / demo / space, to_supervision, videos in detrkit predict
DEPLOY = {
    "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
    "onnx-custom-op": ["onnxruntime-extensions>=0.15"],  # runs files exported with --msda-op detrkit
    "demo": ["gradio>=5"],
    "supervision": ["supervision>=0.25"],
    "video": ["av>=12"],
}
DEPLOY_EXTRAS = [requirement for requirements in DEPLOY.values() for requirement in requirements]

setup(
    name="detrkit",
    version="0.1.0",
    description="DETR, Deformable DETR and friends as Hugging Face Hub-compatible models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=list(SUBPACKAGES),
    package_dir=SUBPACKAGES,
    package_data={"detrkit.kernels": ["csrc/*.cpp", "csrc/*.cu", "csrc/*.h", "csrc/*.cuh"],
                  "detrkit.model_cards": ["*.md"]},
    entry_points={"console_scripts": ["detrkit = detrkit.cli.dispatch:main"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.0,<6",
        "timm>=1.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "evaluate>=0.4",
        "scipy>=1.10",
        "safetensors>=0.4",
        "pycocotools>=2.0.7",
        "tqdm>=4.60",
        "ninja>=1.11",
        "pyyaml>=6.0",
        "pillow>=10.0",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
    ],
    extras_require={
        # the deploy tests run in CI too (the browser test also needs Debian's chromium + chromium-driver)
        # setuptools with its own bdist_wheel: the wheel test builds offline (no build isolation)
        # torchmetrics: an independent PQ to test against; kernels: the package a checkout must not shadow
        "test": ["pytest>=8", "hypothesis>=6.100", "setuptools>=70.1", "torchmetrics>=1.0", "kernels",
                 *DEPLOY_EXTRAS, "selenium>=4.10"],
        **DEPLOY,
    },
)

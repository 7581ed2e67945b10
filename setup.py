"""detrkit: the DETR family of end-to-end object detectors for the Hugging Face ecosystem.

`detrkit` is a namespace package: its sub-packages live in top-level folders that are mapped
onto `detrkit.*` here (never importable as bare `modeling`/`processing`/`kernels`, since
transformers imports any third-party package called `kernels` it finds).
"""
from setuptools import setup

SUBPACKAGES = {
    "detrkit": "scripts/detrkit_main",  # only __main__.py (`python -m detrkit`); no __init__.py: still a namespace
    "detrkit.modeling": "modeling",
    "detrkit.processing": "processing",
    "detrkit.kernels": "kernels",
    "detrkit.training": "scripts/training",  # train / evaluate / predict / data, and the `detrkit` command line
    "detrkit.conversion": "scripts/conversion",  # official checkpoints -> save_pretrained folders
    "detrkit.deploy": "scripts/deploy",  # ONNX export, attention pictures, the web demo
    "detrkit.model_cards": "model_cards",  # card templates (data only): detrkit/modeling/../model_cards as in the repo
}

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
    entry_points={"console_scripts": ["detrkit = detrkit.training.cli:main"]},
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
        "test": ["pytest>=8", "hypothesis>=6.100", "setuptools>=70.1", *DEPLOY_EXTRAS, "selenium>=4.10"],
        **DEPLOY,
    },
)

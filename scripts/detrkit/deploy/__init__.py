"""Deployment and inspection: ONNX export, attention pictures, the Gradio web demo / Hugging Face Space."""


def __getattr__(name):
    # `detrkit.deploy.onnx_session`: loads any file `detrkit export` wrote, custom deformable attention op included
    if name == "onnx_session":
        from .onnx_custom_ops import onnx_session

        return onnx_session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

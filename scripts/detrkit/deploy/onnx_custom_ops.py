"""Deformable attention as one custom ONNX node that onnxruntime runs with detrkit's compiled kernel (opt-in).

`detrkit export MODEL --msda-op detrkit` writes each multi-scale deformable attention as a single node
`ai.detrkit::MultiScaleDeformableAttention(value, spatial_shapes, level_start_index, sampling_locations,
attention_weights) -> output`, with the signature and shapes of `detrkit.kernels.multi_scale_deformable_attention`,
instead of the portable GridSample subgraph (the default). onnxruntime has no such op: `onnx_session(path)` registers
it through onnxruntime-extensions, whose Python custom ops call back into this process, where the op runs detrkit's
C++ CPU kernel on copies of the node's inputs (onnxruntime-extensions copies them in and the output back). The
kernel runs with PyTorch's thread count (`torch.set_num_threads`), not the session's intra-op threads. So such a
file needs, at run time, Python with detrkit and onnxruntime-extensions installed (`pip install
onnxruntime-extensions`), and runs on the CPU execution provider; other runtimes (C++, web, mobile) cannot load it.
A compiled onnxruntime custom-op library would lift that, but needs onnxruntime's C headers, which no package here
provides.
"""
from __future__ import annotations

from pathlib import Path

import torch

DOMAIN = "ai.detrkit"
OP_TYPE = "MultiScaleDeformableAttention"
OPSET = {DOMAIN: 1}


class _MultiScaleDeformableAttentionNode(torch.autograd.Function):
    """Computes the op for the trace to go on; `symbolic` is what torch.onnx writes in its place."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        from detrkit.kernels import multi_scale_deformable_attention

        return multi_scale_deformable_attention(value, spatial_shapes, level_start_index, sampling_locations,
                                                attention_weights)

    @staticmethod
    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        output = g.op(f"{DOMAIN}::{OP_TYPE}", value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights)
        # (B, Q, H * D): rank and dtype for the exporter's shape inference; sizes stay symbolic
        output.setType(value.type().with_sizes([None, None, None]))
        return output


def msda_node(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """A deformable attention's sampling (the module's `sampling_function` signature) as the custom node. While
    tracing, `spatial_shapes` are the (h_l, w_l) the model read from its feature maps: stacked into a tensor here
    so they stay graph values (dynamic height and width)."""
    if not torch.is_tensor(spatial_shapes):
        spatial_shapes = torch.stack([torch.stack([torch.as_tensor(h), torch.as_tensor(w)])
                                      for h, w in spatial_shapes]).to(torch.long)
    return _MultiScaleDeformableAttentionNode.apply(value, spatial_shapes, level_start_index.to(torch.long),
                                                    sampling_locations, attention_weights)


def custom_msda_export(model):
    """Within the block, each traced deformable attention of `model` records the custom node instead of its
    GridSample graph (through the modules' documented sampling seam)."""
    from detrkit.modeling.seams import override_seam

    return override_seam(model, "sampling_function", msda_node)


def uses_custom_op(path: str | Path) -> bool:
    """True when the ONNX file has ai.detrkit nodes (was exported with `--msda-op detrkit`)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.domain == DOMAIN for node in model.graph.node)


def _compute(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The node's body, on the numpy copies onnxruntime-extensions hands over: detrkit's kernel (its PyTorch
    reference, with a warning, where the kernel cannot be built)."""
    from detrkit.kernels import multi_scale_deformable_attention

    with torch.inference_mode():
        output = multi_scale_deformable_attention(*(torch.from_numpy(array) for array in (
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights)))
    return output.numpy()


_registered: dict[int, object] = {}


def _register_op():
    """Declare the Python op to onnxruntime-extensions once per process; returns its library path."""
    try:
        import onnxruntime_extensions as extensions
    except ImportError as error:
        raise ModuleNotFoundError(f"this ONNX file uses the custom op {DOMAIN}::{OP_TYPE} (exported with --msda-op "
                                  "detrkit), which onnxruntime runs through onnxruntime-extensions: pip install "
                                  "onnxruntime-extensions, or export without --msda-op for a file any ONNX runtime "
                                  "loads") from error
    if not _registered:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
        from onnxruntime_extensions._ocos import _on_pyop_invocation

        floats, longs = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64
        opdef = onnx_op(op_type=f"{DOMAIN}::{OP_TYPE}", inputs=[floats, longs, longs, floats, floats],
                        outputs=[floats])(_compute)
        _registered[opdef._nativedef.obj_id] = opdef

        def invoke(op_id, feed, attributes):
            # onnxruntime-extensions' own handler returns outputs as Python lists (`tolist()`), which costs more
            # than the kernel at the encoder's size; its C++ side takes a contiguous numpy array just as well.
            if op_id not in _registered:
                return _on_pyop_invocation(op_id, feed, attributes)
            output = _registered[op_id](*feed)
            return op_id, output.shape, output.reshape(-1)

        PyCustomOpDef.install_hooker(invoke)
    return extensions.get_library_path()


def register(options):
    """Make onnxruntime SessionOptions `options` able to run ai.detrkit::MultiScaleDeformableAttention."""
    options.register_custom_ops_library(_register_op())
    return options


def onnx_session(path: str | Path, options=None, providers=("CPUExecutionProvider",)):
    """An onnxruntime InferenceSession for a file written by `detrkit export`, registering detrkit's custom op
    when the file uses it (a clear ImportError when onnxruntime-extensions is missing)."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    if uses_custom_op(path):
        register(options)
    return ort.InferenceSession(str(path), options, providers=list(providers))

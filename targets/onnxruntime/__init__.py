"""ONNX Runtime: fp32 (the exported graph) and int8 (static Q/DQ quantization with calibration)."""

from edgepipe.targets.backend import Backend

BACKEND = Backend(
    name="onnxruntime",
    config="edgepipe.targets.onnxruntime.config:OnnxRuntimeTargetConfig",
    builder="edgepipe.targets.onnxruntime.builder:OnnxRuntimeTarget",
    device="edgepipe.targets.onnxruntime.runner:OnnxRuntimeDevice",
    build_tools=("onnxruntime",),
)

"""TensorRT (Jetson / NVIDIA GPUs): fp16 and int8 device bundles, the engine built on the device."""

from edgepipe.targets.backend import Backend

BACKEND = Backend(
    name="tensorrt",
    config="edgepipe.targets.tensorrt.config:TensorRtTargetConfig",
    builder="edgepipe.targets.tensorrt.builder:TensorRtTarget",
    device="edgepipe.targets.tensorrt.runner:TensorRtDevice",
    build_tools=("tensorrt",),
)

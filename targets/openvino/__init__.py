"""OpenVINO: IR in fp32, fp16 (compressed weights) and int8 (NNCF post-training quantization)."""

from edgepipe.targets.backend import Backend

BACKEND = Backend(
    name="openvino",
    config="edgepipe.targets.openvino.config:OpenVinoTargetConfig",
    builder="edgepipe.targets.openvino.builder:OpenVinoTarget",
    device="edgepipe.targets.openvino.runner:OpenVinoDevice",
    build_tools=("openvino", "nncf"),
)

"""A test-only backend: the exported ONNX run by onnx's pure-numpy reference evaluator.

It exists to prove that adding a backend is this folder plus one registry line: the test registers
it (REGISTRY["reference"] = this package) and builds, verifies, bundles and predicts with it,
without any other module of edgepipe knowing its name.
"""

from edgepipe.targets.backend import Backend

BACKEND = Backend(
    name="reference",
    config="tests.targets.reference_backend.config:ReferenceTargetConfig",
    builder="tests.targets.reference_backend.builder:ReferenceTarget",
    device="tests.targets.reference_backend.runner:ReferenceDevice",
    build_tools=("onnx",),
    default=False,  # never in the targets a config gets when it names none
)

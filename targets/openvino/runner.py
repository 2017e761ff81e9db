"""OpenVINO on the device: the runner (see builder.py for why fp32 pins f32 and the others do not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.targets.base import Artifact, Device, Runner


class OpenVinoRunner(Runner):
    def __init__(self, xml: Path, threads: int, name: str, precision_hint: str | None, device: str = "CPU"):
        super().__init__(name, threads)
        self.xml, self.precision_hint, self.device = xml, precision_hint, device
        self.compiled = self.request = self.single = None

    def activate_impl(self) -> None:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if self.precision_hint:
            config["INFERENCE_PRECISION_HINT"] = self.precision_hint
        core = ov.Core()
        model = core.read_model(str(self.xml))
        self.compiled = core.compile_model(model, self.device, config)
        self.request = self.compiled.create_infer_request()
        # Field units predict one image at a time. A static batch-1 copy of a dynamic-batch model
        # skips shape inference on every call: openvino-int8 on ELPV, 2-core EPYC, p50 2.61 vs 2.90 ms.
        shape = model.input(0).get_partial_shape()
        if shape.rank.is_static and shape[0].is_dynamic and all(d.is_static for d in list(shape)[1:]):
            model.reshape([1] + [d.get_length() for d in list(shape)[1:]])
            self.single = core.compile_model(model, self.device, config).create_infer_request()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        request = self.single if self.single is not None and len(x) == 1 else self.request
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    def deactivate_impl(self) -> None:
        self.compiled = self.request = self.single = None

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        if self.compiled is None:
            return None
        return tuple(d.get_length() if d.is_static else None for d in self.compiled.input(0).get_partial_shape())

    def runtime_info(self) -> str | None:
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        return f"OpenVINO {self.device} computing in {name}"

    @property
    def input_name(self) -> str | None:
        return self.compiled.input(0).get_any_name() if self.compiled is not None else None


class OpenVinoDevice(Device):
    package = "openvino"
    install = "pip install openvino"

    def runner(self, artifact: Artifact, threads: int) -> Runner:
        # fp32 rows must compute in f32 (a bf16 CPU would otherwise choose bf16); the others let the device choose
        hint = "f32" if artifact.precision == "fp32" else None
        return OpenVinoRunner(artifact.path, threads, artifact.name, hint)

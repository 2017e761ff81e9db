import numpy as np

from edgepipe.pipeline.fallback import (
    FallbackPolicy,
    ValidationSet,
    _best_step,
    build_with_fallback,
    rank_layers,
)
from edgepipe.targets import get_target
from edgepipe.targets.onnxruntime.config import OnnxRuntimeTargetConfig


def test_schedule_doubles_up_to_the_limit():
    assert FallbackPolicy(0.99, 0.003, 8).schedule() == [0, 1, 2, 4, 8]
    assert FallbackPolicy(0.99, 0.003, 5).schedule() == [0, 1, 2, 4, 5]
    assert FallbackPolicy(0.99, 0.003, 0).schedule() == [0]


def test_out_of_reach_goal_picks_the_closest_logits_unless_fewer_float_layers_are_as_close():
    steps = [{"float_layers": 0, "agreement": 0.975, "logit_mse": 0.040},
             {"float_layers": 1, "agreement": 0.970, "logit_mse": 0.020},
             {"float_layers": 2, "agreement": 0.975, "logit_mse": 0.019},
             {"float_layers": 4, "agreement": 0.980, "logit_mse": 0.030}]
    # 4 has the best agreement (one image more), 2 the lowest MSE, 1 is within 10 % of it.
    assert _best_step(steps)["float_layers"] == 1
    steps[1]["logit_mse"] = 0.025  # no longer within 10 %: the float layer is worth its latency
    assert _best_step(steps)["float_layers"] == 2
    assert _best_step(steps[:1])["float_layers"] == 0


def test_validation_score():
    val = ValidationSet(np.zeros((4, 1)), np.array([0, 1, 1, 0]), np.array([[1, 0], [0, 1], [0, 1], [0, 1]], float))
    s = val.score(np.array([[1, 0], [0, 1], [1, 0], [0, 1]], float))
    assert s["agreement"] == 0.75 and abs(s["accuracy_drop"] - 0.25) < 1e-9


def _val(tiny):
    return ValidationSet(tiny["x"], tiny["reference"].argmax(1), tiny["reference"])


def test_ranking_names_real_layers_most_helpful_first(tiny):
    ranking = rank_layers(tiny["onnx"], tiny["calib"], _val(tiny), threads=1)
    import onnx

    names = {n.name for n in onnx.load(str(tiny["onnx"])).graph.node if n.op_type in ("Conv", "Gemm")}
    assert {r["layer"] for r in ranking} <= names and len(ranking) >= 3
    gains = [r["mse_reduction"] for r in ranking]
    assert gains == sorted(gains, reverse=True)


def test_fallback_adds_float_layers_until_the_goal_holds(tiny, tmp_path):
    target, settings = get_target("onnxruntime"), OnnxRuntimeTargetConfig(name="onnxruntime")
    val = _val(tiny)
    ranking = rank_layers(tiny["onnx"], tiny["calib"], val, threads=1)
    seen = []

    def build(keep):
        seen.append(keep)
        return target.build(tiny["onnx"], "int8", tiny["calib"], tmp_path, settings, keep)

    # An unreachable goal walks the whole schedule, says so, and ships the best step it saw.
    [artifact] = build_with_fallback(build, lambda a: target.load(a, 1), val, ranking, FallbackPolicy(1.01, 0, 2), "t")
    fb = artifact.details["fallback"]
    assert [s["float_layers"] for s in fb["steps"]] == [0, 1, 2] and all(s["p50_ms"] > 0 for s in fb["steps"])
    best = _best_step(fb["steps"])
    assert fb["chosen_step"] == best["float_layers"] and not fb["goal_met_on_val"]
    assert fb["kept_float"] == [r["layer"] for r in ranking[:best["float_layers"]]]
    assert seen[-1] == tuple(fb["kept_float"])  # the shipped artifact is the chosen step's build
    assert artifact.details["quantization"]["nodes_to_exclude"] == tuple(fb["kept_float"])

    # A goal the full int8 model already meets stops at the first step.
    seen.clear()
    [artifact] = build_with_fallback(build, lambda a: target.load(a, 1), val, ranking, FallbackPolicy(0.9, 0.1, 8), "t")
    assert seen == [()] and artifact.details["fallback"]["goal_met_on_val"]

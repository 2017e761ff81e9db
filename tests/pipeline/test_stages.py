"""The stages are data (pipeline/stages.py): the orchestrator and the stage keys read the registry,
and neither branches on a stage's name."""

import ast
from pathlib import Path

from edgepipe.pipeline.stages import ALL, REGISTRY, STAGES

PIPELINE = Path(__file__).parents[2] / "pipeline"


def test_the_pipeline_order_and_every_stage_reads_only_earlier_ones():
    assert STAGES == ("finetune", "adapt", "export", "quantize", "verify", "previous", "explain", "reference",
                      "report", "bundle", "track")
    for i, name in enumerate(STAGES):
        stage = REGISTRY[name]
        assert stage.name == name and callable(stage.run) and callable(stage.config)
        assert set(stage.reads) <= set(STAGES[:i]), f"{name} reads a later stage"
        for outputs in stage.reads.values():
            assert outputs is ALL or (isinstance(outputs, tuple) and outputs)


def test_only_the_stages_that_measure_latency_depend_on_the_machine():
    # previous re-times the previous release beside verify's timings of this build
    assert [s for s in STAGES if REGISTRY[s].machine] == ["verify", "previous"]
    assert [s for s in STAGES if not REGISTRY[s].dataset] == ["report", "track"]


def test_the_orchestrator_and_the_keys_never_branch_on_a_stage_name():
    for module in ("build.py", "keys.py"):
        tree = ast.parse((PIPELINE / module).read_text())
        names = [c.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
                 for c in [node.left, *node.comparators] if isinstance(c, ast.Constant) and c.value in STAGES]
        assert not names, f"{module} compares a stage name: {names}"

"""A build SIGKILLed at four stages (finetune, export, quantize, verify) resumes each time from
the first stage that did not complete, and never takes a partial file for a finished one.

The runs happen in the `resumed_build` fixture (tests/pipeline/conftest.py): real subprocess
builds of a tiny dataset, each killed by SIGKILL at a write inside a stage, each started on the
output of the one before; then one build without a kill finishes the job.
"""

import re
import signal

from tests.pipeline.conftest import KILLS

ORDER = ("finetune", "adapt", "export", "quantize", "verify", "previous", "explain", "reference", "report")


def test_every_run_was_killed_inside_its_stage(resumed_build):
    runs = resumed_build["runs"]
    assert [(r["stage"], r["returncode"]) for r in runs] == [(stage, -signal.SIGKILL) for stage, _ in KILLS], \
        runs[-1]["stderr"][-3000:]
    for r in runs:
        stages = r["manifest"]["stages"]
        before = ORDER[:ORDER.index(r["stage"])]
        assert [s for s in before if stages[s]["status"] == "complete"] == list(before)
        assert stages[r["stage"]]["status"] != "complete"  # running, or recorded but never completed
        assert not any(stages.get(s, {}).get("status") == "complete" for s in ORDER[ORDER.index(r["stage"]):])


def test_a_killed_write_leaves_its_temp_file_never_a_partial_final_file(resumed_build):
    for r in resumed_build["runs"]:
        assert all(r["intact"].values()), (r["stage"], r["intact"])  # complete stages: every output as recorded
        where = r["where"]
        if where.startswith("manifest:"):
            continue
        folder, name = where.rsplit("/", 1)
        assert where not in r["files"]
        assert any(re.fullmatch(rf"{re.escape(folder)}/\.{re.escape(name)}\.tmp-\d+", f) for f in r["files"]), r["files"]
    quantize_kill = next(r for r in resumed_build["runs"] if r["stage"] == "quantize")
    assert "targets/onnxruntime-fp32/model.onnx" in quantize_kill["files"]  # a finished file of an unfinished stage


def test_each_run_resumes_at_the_stage_the_last_one_died_in(resumed_build):
    runs = resumed_build["runs"]
    logs = [r["stderr"] for r in runs[1:]] + [resumed_build["final"].stderr]
    for killed, log in zip(runs, logs):
        i = ORDER.index(killed["stage"])
        for done in ORDER[:i]:
            assert f"{done}: up to date (key " in log, (killed["stage"], log[-2000:])
        why = "did not complete this stage" if killed["where"].endswith(":recorded") else "was interrupted in this stage"
        assert f"{killed['stage']}: running (the last run {why}" in log
        if not killed["where"].startswith("manifest:"):
            assert re.search(r"removed \d+ temp file\(s\) left by a killed build", log)


def test_the_resumed_build_is_complete_and_kept_the_work_done_before_the_kills(resumed_build):
    final = resumed_build["final"]
    assert final.exit_code == 0, final.output
    manifest = resumed_build["manifest"]
    # verify was the stage killed last
    assert manifest["last_run"]["ran"][:5] == ["verify", "previous", "explain", "reference", "report"]
    assert "verify/results.json" in resumed_build["runs"][-1]["files"]  # written, yet not trusted: rerun
    assert all(manifest["stages"][s]["status"] == "complete" for s in ORDER)
    assert set(resumed_build["intact"]) >= set(ORDER) and all(resumed_build["intact"].values())
    assert not [f for f in resumed_build["files"] if ".tmp-" in f]
    # The checkpoint finished in the second run is the one the build ships: not redone, not lost.
    second = resumed_build["runs"][1]["manifest"]["stages"]["finetune"]["outputs"]["checkpoint"]["sha256"]
    assert manifest["stages"]["finetune"]["outputs"]["checkpoint"]["sha256"] == second

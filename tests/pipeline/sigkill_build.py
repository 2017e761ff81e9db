"""`python -m tests.pipeline.sigkill_build CONFIG KILL_AT`: `edgepipe build CONFIG` that SIGKILLs
itself at a chosen write, to test that a killed build resumes (tests/pipeline/test_resume.py).

KILL_AT is the end of a path (`finetune/model.pt`): the process dies when that file's finished
temp copy is about to be renamed onto it, the worst moment for a writer. `manifest:STAGE:STATUS`
dies just after the manifest first records STAGE with STATUS: `running` is the disk state of a
build killed anywhere in a stage before its first write (export's minutes of tracing), `recorded`
that of one killed after its last write but before the build marked it complete. The hook wraps
os.replace, so the code under test is the real build, unchanged.
"""

import json
import os
import signal
import sys
from pathlib import Path


def main() -> None:
    config, kill_at = sys.argv[1], sys.argv[2]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        dst = str(dst)
        if kill_at.startswith("manifest:"):
            _, stage, status = kill_at.split(":")
            if dst.endswith("manifest.json") and \
                    json.loads(Path(src).read_text())["stages"].get(stage, {}).get("status") == status:
                real_replace(src, dst, *args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
        elif dst.endswith(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    from edgepipe.cli import main as edgepipe

    sys.argv = ["edgepipe", "build", config]
    edgepipe()


if __name__ == "__main__":
    main()

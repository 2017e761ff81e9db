"""Copy a build's test split into a labelled folder (OUT/<class>/<index>-<file>), for `edgepipe check`
and `edgepipe predict` on a device or in a runtime-only venv.

Usage (build venv):  .venv/bin/python bench/export_test_split.py examples/elpv.yaml /tmp/elpv-test

The split is the one the build used: the same config, dataset and seed through edgepipe.pipeline.data.prepare,
checked against the split hash the build recorded in its manifest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from edgepipe.pipeline.backbones import preprocess_spec
from edgepipe.pipeline.config import load_config
from edgepipe.pipeline.data import prepare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    data = prepare(cfg.dataset, preprocess_spec(cfg.model.backbone, cfg.model.image_size), cfg.seed)
    manifest = cfg.output_dir / "manifest.json"
    recorded = json.loads(manifest.read_text()).get("dataset", {}).get("split_sha256") if manifest.is_file() else None
    if recorded != data.split_sha256:
        print(f"error: the split differs from the one recorded in {manifest} (or there is no build)", file=sys.stderr)
        return 2
    shutil.rmtree(args.out, ignore_errors=True)
    for i in data.split.test:
        f = data.files[i]
        dst = args.out / data.classes[f.label] / f"{i:05d}-{f.path.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.path, dst)
    print(f"{len(data.split.test)} test images -> {args.out} ({', '.join(data.classes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m tests.runtime.soak_predict BUNDLE IMAGES N`: N predictions through edgepipe.Predictor
in a process that holds only what a field unit holds (no torch), printing one JSON line of
results. Run by tests/runtime/test_soak.py; its RSS is the runtime's own, so a per-prediction
leak is not diluted by a gigabyte of build tools.

Inputs rotate through file paths, PIL images and uint8 arrays; every 500th prediction an
unreadable file is fed too, and its ImageError must not leak either. RSS is sampled every 1,000
predictions; the first 1,000 are warm-up (allocator pools and ORT's arenas grow to size).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image


def main() -> None:
    from edgepipe.core.errors import ImageError
    from edgepipe.runtime import Predictor

    bundle, images, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    paths = sorted(images.rglob("*.png"))
    inputs = [str(p) for p in paths] + [Image.open(p).convert("L") for p in paths[:8]] + \
        [np.asarray(Image.open(p)) for p in paths[8:16]]
    broken = images.parent / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:40])
    process = psutil.Process()
    samples, errors, image_errors = [], [], 0
    with Predictor(bundle, threads=2, batch_size=1) as predictor:
        rss_loaded = process.memory_info().rss
        t0 = time.perf_counter()
        for i in range(n):
            try:
                p = predictor.predict(inputs[i % len(inputs)])
                if p.label not in predictor.labels or abs(sum(p.probabilities.values()) - 1) > 1e-4:
                    errors.append(f"{i}: bad prediction {p}")
            except Exception as e:  # any error is a soak failure: record it, keep going
                errors.append(f"{i}: {type(e).__name__}: {e}")
            if i % 500 == 0:
                try:
                    predictor.predict(str(broken))
                    errors.append(f"{i}: an unreadable file was predicted on")
                except ImageError:
                    image_errors += 1
            if (i + 1) % 1000 == 0:
                samples.append(process.memory_info().rss)
        wall = time.perf_counter() - t0
    print(json.dumps({"predictions": n, "errors": errors[:10], "error_count": len(errors),
                      "image_errors_raised": image_errors, "torch_loaded": "torch" in sys.modules,
                      "wall_s": round(wall, 1), "rss_loaded": rss_loaded, "rss_every_1000": samples}))


if __name__ == "__main__":
    main()

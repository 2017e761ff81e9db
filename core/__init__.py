"""edgepipe's torch-free core: errors, preprocessing, file hashing and atomic writes, metrics, console.

Everything above it (backend runners, the device runtime, calibration, the build stages, the CLI)
may import it; it imports nothing of edgepipe's own. A field unit runs on this, the runtime and one
backend's runner.
"""

__version__ = "0.1.0"

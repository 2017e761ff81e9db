"""edgepipe build pipeline: config -> stages -> artifacts -> verify -> report.

Kept free of heavy imports so `pipeline.preprocess` can be used where torch is absent.
"""

__version__ = "0.1.0"

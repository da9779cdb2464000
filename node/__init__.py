"""knee-node: grades knee osteoarthritis on DICOM radiographs and explains it with Grad-CAM."""

import os

__version__ = "0.1.0"

# The model's OpenMP threads sleep rather than spin while they wait for each other.  The node's network and I/O
# threads share the cores with them, and on a busy machine spinning threads stall one another: a DenseNet forward
# took 2-10 times longer (BENCHMARKS.md).  OpenMP reads this once, when torch loads, so it is set here, before.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# JPEG 2000 decoding (OpenJPEG, via Pillow) on every core.
os.environ.setdefault("OPJ_NUM_THREADS", "ALL_CPUS")
# numpy's BLAS on one thread: the node's numpy products are small (the familiarity distance: 5 x 1024 by 1024 x
# 1024), and OpenBLAS's threads spin after each call, taking the cores from the model's (a forward 35 -> 48 ms CPU).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

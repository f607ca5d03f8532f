"""The library the benchmarks share.

* :mod:`.timing`: interleaved timing pairs, sections, goals and checks of the speed benchmarks;
* :mod:`.report`: writing a report, what it says of the machine;
* :mod:`.deployments`: simulated and real CPU deployments of a model, the zoo the studies
  use, the tamper suite, counting false alarms;
* :mod:`.models`: the zoo models the studies measure, the data an owner has, the tamper cases;
* :mod:`.kernel_worker`: a child process that runs a model with another CPU's kernels.

Run every benchmark from the repository's root as a module (``python -m
benchmarks.speed.run``, ``python -m benchmarks.studies.deployments``): that puts the root on
the import path, for this library and for the real servers in :mod:`testkit.servers`.
"""

from __future__ import annotations

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parents[2]

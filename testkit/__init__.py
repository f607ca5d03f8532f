"""What the tests and the benchmarks share: real serving stacks started on 127.0.0.1
(:mod:`testkit.servers`, each in its own process group, stopped at the end) and synthetic
inputs (:mod:`testkit.signals`).

Importable from the repository's root (pytest's ``pythonpath`` and ``python -m benchmarks...``
both put it there); it is not part of the installed package.
"""

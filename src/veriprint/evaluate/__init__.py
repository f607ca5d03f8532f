"""The evaluation harness: declared plans, exact missing rates, a Dask runner, tables and plots.

``veriprint evaluate [--config FILE] [--quick] [--out DIR]`` runs a :class:`Plan` and
writes raw rows (``results.jsonl``), CSV and Markdown tables and PNG figures. Modules:

* :mod:`~veriprint.evaluate.plan`: the plan's frozen dataclasses, the built-in plans;
* :mod:`~veriprint.evaluate.missing`: hypergeometric missing rates, MANC over bags;
* :mod:`~veriprint.evaluate.cells`: the units of work;
* :mod:`~veriprint.evaluate.cache`: the results cache;
* :mod:`~veriprint.evaluate.runner`: the Dask runner;
* :mod:`~veriprint.evaluate.tables`, :mod:`~veriprint.evaluate.plots`,
  :mod:`~veriprint.evaluate.report`: rendering.
"""

from veriprint.evaluate.missing import (
    hypergeom_curve,
    hypergeom_miss,
    manc_missing,
    required_samples,
)
from veriprint.evaluate.plan import (
    AttackSpec,
    MethodSpec,
    ModelSpec,
    Plan,
    full_plan,
    load_plan,
    quick_plan,
)

__all__ = [
    "AttackSpec",
    "MethodSpec",
    "ModelSpec",
    "Plan",
    "full_plan",
    "hypergeom_curve",
    "hypergeom_miss",
    "load_plan",
    "manc_missing",
    "quick_plan",
    "required_samples",
]

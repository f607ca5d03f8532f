"""Speed benchmarks: what a stage, a pass or a check costs, as ratios measured in one run
(``python -m benchmarks.speed.run`` runs the suite; docs/measurements/benchmarks.md)."""

"""veriprint's benchmarks: :mod:`benchmarks.speed` (costs), :mod:`benchmarks.studies` (detection,
false alarms, deployments, servers), on one library, :mod:`benchmarks.lib`. Run each from the
repository's root as ``python -m benchmarks.<speed|studies>.<name>``."""

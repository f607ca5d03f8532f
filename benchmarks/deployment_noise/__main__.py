"""``python -m benchmarks.deployment_noise``."""

import sys

from benchmarks.deployment_noise.cli import main

sys.exit(main())

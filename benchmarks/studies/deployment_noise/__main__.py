"""``python -m benchmarks.studies.deployment_noise``."""

import sys

from benchmarks.studies.deployment_noise.cli import main

sys.exit(main())

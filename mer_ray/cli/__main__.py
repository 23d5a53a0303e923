"""`python -m mer_ray.cli ...`: what Ray job entrypoints run."""

import sys

from mer_ray.cli.main import main

sys.exit(main())

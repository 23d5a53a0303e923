"""`python -m mer_ray.bench` = `mer-ray bench`."""

import sys

from mer_ray.bench import main

sys.exit(main())

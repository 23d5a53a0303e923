"""mer-ray: Ray-distributed ensemble trainer for MER2023 emotion recognition.

Importing the package is cheap on purpose: torch and ray are imported only by the
modules that need them (model/trainer and the Ray drivers), so the data tools and the
`ensembles` package run without either. It does one thing before torch can load: MKL's
strict mode, so a member never depends on its pack's size (mer_ray.cpu_exact).
"""

from mer_ray.cpu_exact import use_strict_mkl

use_strict_mkl()

__version__ = "0.1.0"

"""mer-ray: Ray-distributed ensemble trainer for MER2023 emotion recognition.

Importing the package is cheap on purpose: torch and ray are imported only by the
modules that need them (model/trainer and the Ray drivers), so the data tools and the
`ensembles` package run without either.
"""

__version__ = "0.1.0"

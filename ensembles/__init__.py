"""ensembles: reads mer-ray member files and combines them (no torch, no Ray).

Modules, one job each:

- `load`        load members of one or more runs, refusals
- `where`       the `--where` filter over config fields, seed and fold
- `groups`      MERTools protocol: fold-average each (config, seed); `seed_table`
- `strategies`  combine groups: mean, prob, weighted, greedy
- `tables`      per-split scores and the MERTools-style table
- `prior`       the class prior of unlabelled samples, estimated by EM; the prior shift
- `score`       `mer-ray ensemble score`: evaluation and its output files
- `robustness`  masked-modality scores and feature shift
- `report`      `mer-ray report`: PNGs + one HTML page (matplotlib, optional)
- `output`      writing an output folder (local or URI) whole
- `cli`         `add_ensemble_parser` / `add_report_parser` add the commands to `mer-ray`

The names below load on first use, so `import ensembles` (and `mer-ray --help`) stays
light: neither torch nor Ray, and scikit-learn only when something is scored.
"""

from mer_ray.runs.members import list_member_files, read_member

_LAZY = {
    "load_members": "ensembles.load",
    "make_groups": "ensembles.groups",
    "score_group": "ensembles.groups",
    "seed_table": "ensembles.groups",
    "combine": "ensembles.strategies",
    "STRATEGIES": "ensembles.strategies",
    "evaluate": "ensembles.score",
    "score_runs": "ensembles.score",
    "build_report": "ensembles.report",
    "format_table": "ensembles.tables",
}

__all__ = ["list_member_files", "read_member", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ensembles' has no attribute {name!r}")

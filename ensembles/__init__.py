"""ensembles: reads mer-ray member files and combines them (no torch, no Ray).

The strategies, scoring and report are not built yet; today the package holds the
contract it reads through (`mer_ray.members.read_member`, `list_member_files`).
"""

from mer_ray.members import list_member_files, read_member

__all__ = ["list_member_files", "read_member"]

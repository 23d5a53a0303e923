"""Data: the feature store, the MERTools importer and the synthetic MER2023 generator."""

from mer_ray.data.store import Store, read_manifest, read_store, summary_table, write_store

__all__ = ["Store", "read_store", "read_manifest", "write_store", "summary_table"]

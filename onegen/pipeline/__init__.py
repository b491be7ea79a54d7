"""The batch link job on Ray Data: documents -> OneGen replicas -> index-shard actors -> decide -> Parquet.

Modules: `inputs` (resolve IN, read and validate rows), `stages` (the `map_batches` callables),
`outputs` (schema, atomic part files, the run manifest and lock), `uris` (locations without
credentials), `model_and_index` (the real model replicas and index-shard actors), `job` (plans and
runs the pipeline), `html_view` (a static HTML view of a finished output). Entry point: `run_job(JobConfig(...))`, or
`python jobs/link.py`.
"""
from onegen.pipeline.job import JobConfig, Linking, Summary, run_job

__all__ = ["JobConfig", "Linking", "Summary", "run_job"]

"""The batch link job on Ray Data: documents -> OneGen replicas -> index-shard actors -> decide -> Parquet.

Modules: `inputs` (resolve IN, read and validate rows), `stages` (the `map_batches` callables),
`config` (the job's options), `outputs` (schema, atomic part files, the run manifest and lock), `uris` (locations without
credentials), `model_and_index` (the real model replicas and index-shard actors), `job` (plans and
runs the pipeline), `html_view` (a static HTML view of a finished output). Entry point: `run_job(JobConfig(...))`, or
`python jobs/link.py`.
"""
import importlib

_MODULE_OF = {"JobConfig": "config", "Linking": "job", "Summary": "job", "run_job": "job"}  # name -> its module
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name, its module imported on first use: `onegen-link --help` parses without importing Ray."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)

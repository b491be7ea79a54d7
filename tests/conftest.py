"""Test setup: no hub access, shared data folder, markers for slow/GPU tests."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's files (sessions, and ray_current_cluster, which a ray.init() without an address joins) in a folder of
# this test process: a test never joins a Ray left running on the machine, nor that of another test worker.
# Under /tmp, not a long $TMPDIR: Ray's socket paths must stay under the 107-byte limit of a Unix socket.
RAY_TMPDIR = tempfile.mkdtemp(prefix=f"onegen-ray-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-",
                              dir="/tmp" if os.path.isdir("/tmp") else None)
os.environ["RAY_TMPDIR"] = RAY_TMPDIR
atexit.register(shutil.rmtree, RAY_TMPDIR, ignore_errors=True)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ONEGEN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's data bundle (../shared/data); tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"data bundle not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

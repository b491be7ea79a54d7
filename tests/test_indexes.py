"""The cache of built indexes (onegen.indexes): callers wanting the same index at once build it once."""
import threading
import time

import onegen.index_build as index_build
from kb.manifest import MANIFEST_NAME
from onegen.indexes import cached_index_dir, ensure_index

FINGERPRINT = {"model": "m", "weights_sha256": "w", "tokenizer_sha256": "t"}


def test_two_callers_wanting_the_same_index_build_it_once(tmp_path, monkeypatch):
    """Two jobs started together on a fresh machine: one builds the cached index, the other waits and uses it."""
    monkeypatch.setenv("ONEGEN_CACHE", str(tmp_path / "cache"))
    kb = tmp_path / "kb.jsonl"
    kb.write_text('{"id": "Paris", "title": "Paris"}\n')
    builds = []

    def slow_build(config):
        builds.append(config.out)
        time.sleep(0.5)  # the other caller arrives while this one builds
        config.out.mkdir(parents=True)
        (config.out / MANIFEST_NAME).write_text("{}")

    monkeypatch.setattr(index_build, "build_index", slow_build)
    found = []
    callers = [threading.Thread(target=lambda: found.append(ensure_index(kb, None, FINGERPRINT))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(builds) == 1
    assert found == [builds[0], builds[0]] and builds[0].parent == cached_index_dir(FINGERPRINT, "x", "kb").parent

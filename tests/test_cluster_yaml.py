"""cluster.yaml is a valid Ray cluster-launcher config that installs this project, mounts the index and keeps
the dashboard (and its Jobs API) on the head's loopback."""
import copy
import json
import os
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_own_schema_and_launcher_validation(config):
    schema = json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before it starts a node


def test_schema_check_catches_a_broken_config(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_wrkers"] = 2  # typo: the launcher rejects unknown keys
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_head_gpu_workers_setup_and_index_mount(config):
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    assert any(node["resources"].get("GPU", 0) >= 1 for node in nodes.values())
    assert any("pip install" in cmd and "onegen-el" in cmd for cmd in config["setup_commands"])
    assert config["file_mounts"]["~/onegen-el"] == "."
    assert "/data/index" in config["file_mounts"]


def dashboard_hosts(command: str) -> list[str]:
    """The --dashboard-host values of the `ray start` calls in one shell command line."""
    words = shlex.split(command.replace(";", " ; "))
    hosts = [w.split("=", 1)[1] for w in words if w.startswith("--dashboard-host=")]
    return hosts + [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--dashboard-host"]


def test_dashboard_and_jobs_api_listen_on_loopback_only(config):
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    head = [cmd for cmd in config["head_start_ray_commands"] if "ray start --head" in cmd]
    assert head, "the head must be started by a `ray start --head` command"
    assert all(dashboard_hosts(cmd) == ["127.0.0.1"] for cmd in head)  # explicit: never Ray's choice of the day
    assert all(host in ("127.0.0.1", "localhost") for cmd in starts for host in dashboard_hosts(cmd))
    assert not any("0.0.0.0" in cmd for cmd in starts)

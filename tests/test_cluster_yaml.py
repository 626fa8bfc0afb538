"""Offline checks of cluster.yaml with Ray's own cluster-config validator.

`prepare_config` is the part of `ray up` that merges the file with Ray's
AWS defaults (ray/autoscaler/aws/defaults.yaml), fills in per-node-type
min/max workers and checks the docker section. `validate_config` then checks
the result against ray/autoscaler/ray-schema.json (unknown keys are errors)
and the cross-field rules (head_node_type must be a declared node type, the
sum of min_workers must not exceed max_workers). Neither talks to AWS or
imports boto3. The AWS-specific bootstrap (key pair, IAM role, security
groups, AMI), which needs credentials and network, lives in the provider's
`bootstrap_config`, and `ray up` calls that only after these two steps.
"""

import copy
import ipaddress
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
RAY_PORTS = {6379: "GCS", 8265: "dashboard", 10001: "Ray Client"}
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def raw():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def prepared(raw):
    return prepare_config(copy.deepcopy(raw))


def _prepare_and_validate(cfg):
    validate_config(prepare_config(copy.deepcopy(cfg)))


def _rename_key(d, old, new):
    d[new] = d.pop(old)


# ---------------------------------------------------------------- schema


def test_cluster_yaml_passes_rays_validator(raw):
    _prepare_and_validate(raw)


def test_basic_shape(raw):
    assert raw["cluster_name"] == "hpsearch"
    assert raw["provider"]["type"] == "aws"
    assert raw["provider"]["region"]
    assert "cache_stopped_nodes" in raw["provider"]
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    cpu_workers = [
        name
        for name, t in types.items()
        if name != raw["head_node_type"] and "GPU" not in t["resources"]
    ]
    assert gpu_types and cpu_workers
    for name, t in types.items():
        if name == raw["head_node_type"]:
            continue
        assert t["min_workers"] == 0, f"{name} should scale from zero"
        assert 0 < t["max_workers"] <= raw["max_workers"]


@pytest.mark.parametrize(
    "mutate, bad_key",
    [
        (lambda c: _rename_key(c, "max_workers", "max_worker"), "max_worker"),
        (
            lambda c: _rename_key(c, "available_node_types", "availabel_node_types"),
            "availabel_node_types",
        ),
        (
            lambda c: _rename_key(
                c, "head_start_ray_commands", "head_start_ray_command"
            ),
            "head_start_ray_command",
        ),
        (
            lambda c: _rename_key(
                c["available_node_types"]["ray.worker.gpu"], "max_workers", "max_worker"
            ),
            "max_worker",
        ),
    ],
    ids=["top-max_worker", "top-availabel_node_types", "top-command", "node-max_worker"],
)
def test_typo_in_a_key_is_rejected(raw, mutate, bad_key):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(repr(bad_key))):
        _prepare_and_validate(broken)


def test_head_node_type_must_be_a_declared_node_type(raw):
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "ray.head.missing"
    with pytest.raises(ValueError, match="must be one of `available_node_types`"):
        _prepare_and_validate(broken)


def test_every_command_list_is_set_in_the_file(raw, prepared):
    # fillout_defaults does a shallow merge with Ray's AWS defaults, whose
    # setup_commands would pip-install a nightly Ray wheel. Set every list here.
    for key in (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in raw, f"{key} missing: Ray's AWS default would be used"
    assert "ray-wheels" not in yaml.safe_dump(prepared)


# --------------------------------------------------------------- network


def _ingress_rules(node):
    """Yield every dict that looks like an EC2 ingress rule, anywhere."""
    if isinstance(node, dict):
        if "FromPort" in node or "ToPort" in node or "IpRanges" in node:
            yield node
        for v in node.values():
            yield from _ingress_rules(v)
    elif isinstance(node, list):
        for v in node:
            yield from _ingress_rules(v)


def _world_open_ray_ports(cfg):
    problems = []
    for rule in _ingress_rules(cfg):
        cidrs = [r.get("CidrIp", "") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6", "") for r in rule.get("Ipv6Ranges", [])]
        world = [
            c for c in cidrs if c and ipaddress.ip_network(c, strict=False).prefixlen == 0
        ]
        if not world:
            continue
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        everything = rule.get("IpProtocol") == "-1" or lo == -1
        for port, what in RAY_PORTS.items():
            if everything or lo <= port <= hi:
                problems.append(f"{what} port {port} open to {world}")
    return problems


def _all_strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _all_strings(v)


def test_no_ray_port_is_open_to_the_world(raw, prepared):
    assert _world_open_ray_ports(raw) == []
    assert _world_open_ray_ports(prepared) == []
    # No world-wide CIDR anywhere in the values (comments don't count).
    for s in _all_strings(raw):
        assert "0.0.0.0/0" not in s and "::/0" not in s, s


def test_the_port_check_would_catch_an_open_dashboard(raw):
    bad = copy.deepcopy(raw)
    bad["provider"]["security_group"] = {
        "GroupName": "hpsearch-open",
        "IpPermissions": [
            {
                "FromPort": 8265,
                "ToPort": 8265,
                "IpProtocol": "tcp",
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    }
    _prepare_and_validate(bad)  # schema-valid, so only our check stops it
    assert _world_open_ray_ports(bad) == ["dashboard port 8265 open to ['0.0.0.0/0']"]


def test_dashboard_is_bound_to_localhost(raw):
    starts = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 1
    assert "--head" in starts[0]
    assert "--dashboard-host=127.0.0.1" in starts[0]
    everything = " ".join(_all_strings(raw))
    assert "--dashboard-host=0.0.0.0" not in everything
    assert "--ray-client-server-port" not in everything


def test_workers_join_the_head_gcs(raw):
    head = next(c for c in raw["head_start_ray_commands"] if "ray start" in c)
    port = re.search(r"--port=(\d+)", head).group(1)
    worker = next(c for c in raw["worker_start_ray_commands"] if "ray start" in c)
    assert f"--address=$RAY_HEAD_IP:{port}" in worker


# ---------------------------------------------------------- setup, auth


def _setup_lists(raw, prepared):
    """node type -> the setup commands that node type really runs."""
    lists = {}
    for name, node in prepared["available_node_types"].items():
        if name == prepared["head_node_type"]:
            lists[name] = prepared["head_setup_commands"]
        else:
            lists[name] = node.get(
                "worker_setup_commands", prepared["worker_setup_commands"]
            )
    return lists


def test_file_mounts_ship_the_project(raw):
    assert raw["file_mounts"]["~/hpsearch"] == "."
    assert ".venv" in raw["rsync_exclude"]


def test_setup_commands_install_hpsearch_on_every_node_type(raw, prepared):
    for name, cmds in _setup_lists(raw, prepared).items():
        joined = "\n".join(cmds)
        assert re.search(r"pip install .*-e ~/hpsearch\b", joined), name
        gpu = prepared["available_node_types"][name]["resources"].get("GPU", 0) > 0
        if gpu:
            # Keep the CUDA build: never the CPU index or the CPU constraints.
            assert CPU_TORCH_INDEX not in joined, name
            assert "constraints-cpu.txt" not in joined, name
        else:
            torch_cpu = next(
                i for i, c in enumerate(cmds) if "torch" in c and CPU_TORCH_INDEX in c
            )
            project = next(i for i, c in enumerate(cmds) if "-e ~/hpsearch" in c)
            assert torch_cpu < project, f"{name}: CPU torch must be installed first"
            assert "constraints-cpu.txt" in cmds[project], name


def _auth_modes(text):
    return set(re.findall(r"RAY_AUTH_MODE=(\w+)", text))


def test_every_node_uses_the_same_ray_auth_mode(raw, prepared):
    modes = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in raw[key] if "ray start" in c)
        modes[key] = _auth_modes(start)
    for name, cmds in _setup_lists(raw, prepared).items():
        modes[name] = _auth_modes("\n".join(cmds))
    assert all(len(m) == 1 for m in modes.values()), modes
    (mode,) = set.union(*modes.values())
    assert mode in ("token", "disabled"), mode
    if mode == "token":
        # ...and every node gets the same token, at Ray's default path.
        token_dir = next(r for r in raw["file_mounts"] if "auth" in r)
        for name, cmds in _setup_lists(raw, prepared).items():
            assert any(
                token_dir in c and "~/.ray/auth_token" in c for c in cmds
            ), name

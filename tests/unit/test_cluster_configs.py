"""The shipped cluster configs (cluster/) pass Ray's own autoscaler validation / the KubeRay CRDs' required fields,
stay secure by default (loopback or ClusterIP dashboard, token auth on) and agree with each other; the multi-node
storage check refuses node-local paths."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from dia_ray.distributed import cluster_checks
from dia_ray.distributed.cluster_checks import mount_of, parse_mounts, require_shared_storage
from dia_ray.errors import StorageError

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_UP = CLUSTER / "ray-up" / "a100.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster-a100.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob-sweep.yaml"
PVC = CLUSTER / "kuberay" / "shared-storage.yaml"
SHARED = "/mnt/shared"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------------------------------------ ray up


@pytest.fixture(scope="module")
def ray_up() -> dict:
    return load(RAY_UP)


def test_ray_up_config_passes_rays_own_validation(ray_up):
    # What `ray up` does before touching the cloud: fill in the provider defaults, then validate against
    # ray/autoscaler/ray-schema.json plus the cross-field checks.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(ray_up))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_up_validation_would_catch_a_broken_config(ray_up):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(ray_up)
    broken["available_node_types"]["ray.worker.a100"]["resources"]["GPU"] = "8"  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_ray_up_has_cpu_head_and_autoscaling_8xa100_workers(ray_up):
    types = ray_up["available_node_types"]
    head = types[ray_up["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    (worker_name,) = [name for name in types if name != ray_up["head_node_type"]]
    worker = types[worker_name]
    assert worker["resources"]["GPU"] == 8 and worker["resources"]["accelerator_type:A100"] == 1
    assert worker["node_config"]["InstanceType"] == "p4d.24xlarge"
    assert 0 <= worker["min_workers"] <= worker["max_workers"] <= ray_up["max_workers"]


def test_ray_up_binds_dashboard_to_loopback_and_keeps_token_auth(ray_up):
    head_start = " ".join(ray_up["head_start_ray_commands"])
    worker_start = " ".join(ray_up["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "RAY_AUTH_MODE=disabled" not in RAY_UP.read_text()
    assert ray_up["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # same token on every node


def test_ray_up_mounts_shared_storage_and_installs_cuda_torch_on_workers(ray_up):
    assert any(f"{SHARED}:{SHARED}" in opt for opt in ray_up["docker"]["run_options"])
    assert any("mount -t nfs4" in cmd and SHARED in cmd for cmd in ray_up["initialization_commands"])
    worker_setup = " ".join(ray_up["worker_setup_commands"])
    assert re.search(r'pip install -q "torch[^"]*"\s*$', ray_up["worker_setup_commands"][0])  # PyPI = CUDA build
    assert "whl/cpu" not in worker_setup and "whl/cpu" in ray_up["head_setup_commands"][0]
    assert "pip install -q -e /home/ray/dia-ray" in worker_setup
    assert ray_up["file_mounts"]["/home/ray/dia-ray"] == "."
    assert "/data" in ray_up["rsync_exclude"] and "/.venv" in ray_up["rsync_exclude"]


def test_ray_up_declares_its_maximum_node_count(ray_up):
    match = re.search(r"DIA_RAY_MAX_NODES=(\d+)", " ".join(ray_up["head_start_ray_commands"]))
    assert match and int(match.group(1)) == 1 + ray_up["max_workers"]


# ------------------------------------------------------------------------------------------------ KubeRay


def cluster_specs() -> list[tuple[str, dict]]:
    return [("raycluster", load(RAYCLUSTER)["spec"]), ("rayjob", load(RAYJOB)["spec"]["rayClusterSpec"])]


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def test_kuberay_resources_have_the_crd_identity_fields():
    for path, kind in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")):
        doc = load(path)
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])  # DNS-1123 label


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_cluster_spec_has_required_fields(name, spec):
    # Required by the RayCluster CRD (ray-operator/apis/ray/v1/raycluster_types.go): headGroupSpec.template;
    # workerGroupSpecs[].groupName/minReplicas/maxReplicas/template; rayStartParams is a map of strings.
    head = spec["headGroupSpec"]
    assert containers(head["template"])[0]["image"] and containers(head["template"])[0]["name"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert spec["workerGroupSpecs"], "at least one worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        (worker,) = containers(group["template"])
        assert worker["name"] and worker["image"] == containers(head["template"])[0]["image"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert worker["resources"]["requests"]["nvidia.com/gpu"] == "8"
        pod = group["template"]["spec"]
        assert "A100" in " ".join(pod["nodeSelector"].values())
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_dashboard_is_cluster_private_and_token_auth_is_on(name, spec):
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert spec["authOptions"]["mode"] == "token"
    for group in [head, *spec["workerGroupSpecs"]]:
        for container in containers(group["template"]):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", "token") == "token"


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_shared_volume_is_mounted_in_head_and_workers(name, spec):
    pvc = load(PVC)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert claims[mounts[SHARED]] == pvc["metadata"]["name"]


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_declares_its_maximum_node_count(name, spec):
    (head,) = containers(spec["headGroupSpec"]["template"])
    env = {e["name"]: e["value"] for e in head["env"]}
    assert int(env["DIA_RAY_MAX_NODES"]) == 1 + sum(g["maxReplicas"] for g in spec["workerGroupSpecs"])


def test_rayjob_runs_a_sweep_on_shared_storage_and_cleans_up():
    from ray.runtime_env import RuntimeEnv

    from dia_ray.distributed.jobs import JOB_ENV_VARS

    spec = load(RAYJOB)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["dia-ray", "sweep"] or argv[:4] == ["python", "-m", "dia_ray", "sweep"]
    assert argv[argv.index("--storage") + 1].startswith(SHARED + "/")
    sweep = argv[argv.index("sweep") + 1]
    assert sweep.startswith("/home/ray/dia-ray/sweeps/")  # the project's sweeps/ inside the image (Dockerfile)
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    assert runtime_env["env_vars"] == JOB_ENV_VARS  # what `dia-ray submit` sets


def test_rayjob_sweep_file_ships_with_the_project():
    argv = shlex.split(load(RAYJOB)["spec"]["entrypoint"])
    sweep = argv[argv.index("sweep") + 1]
    relative = REPO / Path(sweep).relative_to("/home/ray/dia-ray")
    assert relative.is_file(), f"{relative} is named by rayjob-sweep.yaml but does not exist"


def test_ray_version_is_the_same_everywhere():
    import ray

    versions = {"installed ray": ray.__version__}
    versions["ray-up image"] = re.search(r"rayproject/ray:([\d.]+)-", load(RAY_UP)["docker"]["image"]).group(1)
    versions["Dockerfile"] = re.search(r"FROM rayproject/ray:([\d.]+)-", (CLUSTER / "docker" / "Dockerfile")
                                       .read_text()).group(1)
    for name, spec in cluster_specs():
        versions[name] = spec["rayVersion"]
    assert len(set(versions.values())) == 1, versions


def test_runtime_env_overlay_is_valid_and_holds_no_secrets():
    from dia_ray.distributed.jobs import SECRET_NAME, build_runtime_env, load_runtime_env_file

    overlay = load_runtime_env_file(CLUSTER / "runtime_env.yaml")
    env = build_runtime_env(REPO, overlay)
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1" and "*.png" in env["excludes"]
    assert not [name for name in overlay["env_vars"] if SECRET_NAME.search(name)]
    assert "RAY_AUTH_MODE" not in overlay["env_vars"]


# ------------------------------------------------------------------------------------------------ shared storage

MOUNTS = """\
overlay / overlay rw,relatime,lowerdir=/a,upperdir=/b 0 0
/dev/nvme0n1p1 /home ext4 rw,relatime 0 0
fs-123.efs.us-east-1.amazonaws.com:/ /mnt/shared nfs4 rw,vers=4.1,rsize=1048576 0 0
gcsfuse-bucket /mnt/gcs fuse.gcsfuse rw,nosuid,nodev 0 0
/dev/sdb1 /mnt/shared/local\\040scratch xfs rw 0 0
"""


def test_nfs_path_is_accepted_on_a_multi_node_cluster():
    require_shared_storage("/mnt/shared/dia-ray/run1", nodes=5, mounts_text=MOUNTS)
    require_shared_storage("/mnt/gcs/dia-ray", nodes=5, mounts_text=MOUNTS)


def test_node_local_path_is_refused_on_a_multi_node_cluster_with_the_fix():
    with pytest.raises(StorageError) as err:
        require_shared_storage("/home/ray/storage", nodes=3, mounts_text=MOUNTS)
    message = str(err.value)
    assert "ext4" in message and "3 nodes" in message and "\n" not in message
    assert "object store (s3://bucket/prefix" in message and "shared filesystem mounted at the same path" in message


def test_longest_mount_prefix_decides():
    mounts = parse_mounts(MOUNTS)
    assert mount_of("/mnt/shared/local scratch/x", mounts) == ("/mnt/shared/local scratch", "xfs")
    assert mount_of("/mnt/sharedx/y", mounts) == ("/", "overlay")  # a path prefix, not a string prefix
    with pytest.raises(StorageError):
        require_shared_storage("/mnt/shared/local scratch/x", nodes=2, mounts_text=MOUNTS)


def test_uris_and_single_node_clusters_need_no_shared_filesystem():
    require_shared_storage("s3://bucket/dia-ray", nodes=8, mounts_text=MOUNTS)
    require_shared_storage("gs://bucket/dia-ray", nodes=8, mounts_text=MOUNTS)
    require_shared_storage("/home/ray/storage", nodes=1, mounts_text=MOUNTS)

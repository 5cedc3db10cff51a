"""The Kubernetes manifests (deploy/kubernetes/) checked statically: no cluster runs here.

Every resource is validated against the Kubernetes API's JSON schemas in strict mode (unknown
fields are errors) with kubernetes-validate, for the oldest version the manifests need (1.31:
StatefulSet ordinals) and the newest it knows. Then what a schema cannot see: the references
between resources, the device StatefulSet's flash claims and identities.
What this does not prove (docs/swarm.md): that a cluster schedules them, that the storage
classes exist, that the probes pass, that the lab works there.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
# ConfigMaps made from the repository's files (kubectl create configmap NAME --from-file=FILE), not copied
MADE_BY_HAND = {"fota-firmware": "firmware/releases.toml", "mosquitto-conf": "mosquitto/mosquitto.conf"}


def resources() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def named(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in resources() if doc["kind"] == kind}


def pod_templates() -> list[tuple[str, dict]]:
    kinds = ("Deployment", "StatefulSet", "Job")
    return [(doc["metadata"]["name"], doc["spec"]["template"]) for _, doc in resources() if doc["kind"] in kinds]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("index", range(len(resources())))
def test_every_resource_is_valid_against_the_kubernetes_schema_in_strict_mode(index, version):
    name, doc = resources()[index]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is not valid for Kubernetes {version}: "
                    f"{exc.message} at {'/'.join(map(str, exc.path))}")


def test_the_kustomization_applies_every_manifest():
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def test_each_device_is_a_statefulset_pod_with_its_own_flash_claim_and_its_name_as_id():
    devices = named("StatefulSet")["device"]["spec"]
    claims = [t["metadata"]["name"] for t in devices["volumeClaimTemplates"]]
    pod = devices["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e for e in container["env"]}
    assert claims == ["flash"] and mounts["/data"] == "flash"
    assert env["FOTA_DEVICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert devices["ordinals"]["start"] == 1           # device-1.., as fota-provision names the identities
    assert pod["terminationGracePeriodSeconds"] == 0    # a deleted pod is a power cut
    assert env["FOTA_FLASH_WRITEBACK"]["value"] == "1"
    assert named("Service")[devices["serviceName"]]["spec"]["clusterIP"] == "None"


def test_every_claim_config_map_and_service_a_pod_uses_exists():
    claims, config_maps, services = named("PersistentVolumeClaim"), named("ConfigMap"), named("Service")
    for owner, template in pod_templates():
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (owner, volume)
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert name in config_maps or (REPO / MADE_BY_HAND.get(name, "-")).is_file(), (owner, volume)
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                for host in ("mosquitto", "server", "link"):
                    if env.get("value", "").removeprefix("http://").split(":")[0] == host:
                        assert host in services, (owner, env)
    labels = [t["metadata"]["labels"] for _, t in pod_templates()]
    for name, service in services.items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= pod.items() for pod in labels), f"service {name} selects no pod"


def test_containers_run_the_images_entry_points():
    scripts = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]) | {"sh", "mosquitto"}
    for owner, template in pod_templates():
        for container in template["spec"]["containers"]:
            command = container["command"]
            assert command[0] in scripts, (owner, command)
            if command[0] == "sh":
                assert command[-1].split("exec ")[-1].split()[0] in scripts, (owner, command)


def test_config_maps_made_from_the_repositorys_files_are_documented_with_their_command():
    text = "".join(p.read_text() for p in MANIFESTS.glob("*.yaml"))
    for name, source in MADE_BY_HAND.items():
        assert f"kubectl create configmap {name} --from-file={source} -n fotalab" in text

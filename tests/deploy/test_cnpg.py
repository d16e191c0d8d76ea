"""The production overlay's PostgreSQL, run by CloudNativePG: every CNPG object validates strictly
against the operator's CRD schemas (schemas/cnpg/), and what the Deployments name (Secrets,
Service, port, database, CA) is what the Cluster makes, as the operator names it."""

import copy
import re
from urllib.parse import urlsplit

import pytest
from deploy_support import APPS, K8S_OVERLAYS, NAMESPACE, app_container

PRODUCTION = "k8s/overlays/production"
CLUSTER = "meshed-pg"


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_cnpg_objects_validate(render, cnpg_validator, overlay):
    problems = []
    for obj in render(overlay):
        if cnpg_validator.handles(obj):
            problems += [f"{obj['kind']}/{obj['metadata']['name']}: {m}" for m in cnpg_validator.errors(obj)]
    assert not problems, "\n".join(problems)


def test_production_declares_a_cluster_and_its_backups(manifests):
    m = manifests(PRODUCTION)
    cluster = m.get("Cluster", CLUSTER)
    assert cluster is not None and cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    synchronous = spec["postgresql"]["synchronous"]
    # A commit waits for at least one standby, and never silently stops waiting.
    assert synchronous["number"] >= 1 and synchronous["dataDurability"] == "required"
    assert synchronous["number"] < spec["instances"]
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["enableSuperuserAccess"] is False
    backups = m.of_kind("ScheduledBackup")
    assert [b["spec"]["cluster"]["name"] for b in backups] == [CLUSTER]
    assert backups[0]["spec"]["method"] == "barmanObjectStore" and spec["backup"]["barmanObjectStore"]
    assert spec["backup"]["retentionPolicy"]
    assert len(backups[0]["spec"]["schedule"].split()) == 6  # CNPG's cron has seconds first
    # The instances and the operator's Jobs stay out of the mesh (istio/README.md).
    assert spec["inheritedMetadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert not manifests("k8s/overlays/local").of_kind("Cluster")


def test_cnpg_validator_can_fail(manifests, cnpg_validator):
    cluster = manifests(PRODUCTION).get("Cluster", CLUSTER)
    assert cnpg_validator.errors(cluster) == []
    typo = copy.deepcopy(cluster)
    typo["spec"]["postgresql"]["synchronous"]["numbr"] = 1
    assert any("numbr" in e for e in cnpg_validator.errors(typo))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["postgresql"]["synchronous"]["dataDurability"] = "sometimes"
    assert cnpg_validator.errors(wrong)
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["instances"] = "three"
    assert cnpg_validator.errors(wrong_type)


def database_env(container: dict) -> dict:
    return {item["name"]: item for item in container.get("env", [])}


def test_deployments_connect_to_the_cluster_as_the_operator_names_it(manifests):
    m = manifests(PRODUCTION)
    cluster = m.get("Cluster", CLUSTER)["spec"]
    initdb = cluster["bootstrap"]["initdb"]
    # Databases: the bootstrap one, and those made by postInitSQL; roles likewise, plus managed ones.
    databases = {initdb["database"]: initdb["owner"]}
    for statement in initdb.get("postInitSQL", []):
        match = re.fullmatch(r"CREATE DATABASE (\w+) OWNER (\w+)", statement)
        if match:
            databases[match.group(1)] = match.group(2)
    managed = {role["name"]: role for role in cluster["managed"]["roles"]}
    seen = set()
    for app in APPS:
        dep = m.get("Deployment", app)
        pod = dep["spec"]["template"]
        assert pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"] == "5432"
        app_env = m.container_env(app_container(dep))
        assert app_env["REPOSITORY_BACKEND"] == "postgres"
        (migrate,) = pod["spec"]["initContainers"]
        assert migrate["image"] == app_container(dep)["image"]
        assert migrate["command"][-3:] == ["manage.py", "migrate", "--noinput"]
        for container in (app_container(dep), migrate):
            env = database_env(container)
            url = urlsplit(env["DATABASE_URL"]["value"])
            assert (url.username, url.password) == ("$(DATABASE_USER)", "$(DATABASE_PASSWORD)")
            names = [item["name"] for item in container["env"]]
            assert names.index("DATABASE_USER") < names.index("DATABASE_URL")  # $(VAR) needs it defined first
            assert names.index("DATABASE_PASSWORD") < names.index("DATABASE_URL")
            # The read-write Service the operator creates for the cluster, on PostgreSQL's port.
            assert url.hostname in (f"{CLUSTER}-rw", f"{CLUSTER}-rw.{NAMESPACE}", f"{CLUSTER}-rw.{NAMESPACE}.svc")
            assert url.port == 5432
            database = url.path.lstrip("/")
            assert database in databases, f"{app}: database {database} is not created by the Cluster"
            secret = env["DATABASE_USER"]["valueFrom"]["secretKeyRef"]
            assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == secret["name"]
            owner = databases[database]
            if owner == initdb["owner"]:
                assert secret["name"] == f"{CLUSTER}-app"  # generated by the operator for the owner
            else:
                assert managed[owner]["passwordSecret"]["name"] == secret["name"] and managed[owner]["login"]
            assert (secret["key"], env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]) == (
                "username",
                "password",
            )
            assert env["PGSSLMODE"]["value"] == "verify-full"
            mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
            ca_volume = mounts[env["PGSSLROOTCERT"]["value"].rpartition("/")[0]]
            seen.add(database)
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == ca_volume)
        assert volume["secret"]["secretName"] == f"{CLUSTER}-ca"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never the CA's key
    assert len(seen) == len(APPS), "the services share a database"


def test_only_the_two_services_reach_postgres(manifests):
    m = manifests(PRODUCTION)
    instance = {"cnpg.io/cluster": CLUSTER}
    policies = [
        p
        for p in m.of_kind("NetworkPolicy")
        if all(instance.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
        and all(
            (e["operator"] == "DoesNotExist") != (e["key"] in instance)
            for e in p["spec"]["podSelector"].get("matchExpressions", [])
        )
    ]
    assert [p["metadata"]["name"] for p in policies] == [CLUSTER], "other policies also admit to PostgreSQL"
    in_namespace = set()
    for rule in policies[0]["spec"]["ingress"]:
        if any(port["port"] == 5432 for port in rule["ports"]):
            for peer in rule["from"]:
                if "namespaceSelector" not in peer:
                    in_namespace.add(tuple(sorted(peer["podSelector"]["matchLabels"].items())))
    assert in_namespace == {(("app", "user-svc"),), (("app", "order-svc"),), (("cnpg.io/cluster", CLUSTER),)}
    for app in APPS:
        assert m.workloads_selected_by({"app": app}) == [m.get("Deployment", app)]

"""The production overlay's PostgreSQL, run by CloudNativePG: every CNPG object validates strictly
against the operator's CRD schemas (schemas/cnpg/), and what the Deployments name (Secrets,
Service, port, database, CA) is what the Cluster makes, as the operator names it."""

import copy
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_support import APPS, K8S_OVERLAYS, NAMESPACE, REPO_ROOT, app_container

PRODUCTION = "k8s/overlays/production"
CLUSTER = "meshed-pg"


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_cnpg_objects_validate(render, cnpg_validator, overlay):
    problems = []
    for obj in render(overlay):
        if cnpg_validator.handles(obj):
            problems += [f"{obj['kind']}/{obj['metadata']['name']}: {m}" for m in cnpg_validator.errors(obj)]
    assert not problems, "\n".join(problems)


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
    store = manifests(PRODUCTION).get("ObjectStore", "meshed-pg-backups")
    assert cnpg_validator.errors(store) == []
    typo = copy.deepcopy(store)
    typo["spec"]["configuration"]["destinationPat"] = typo["spec"]["configuration"].pop("destinationPath")
    assert any("destinationPat" in e for e in cnpg_validator.errors(typo))
    plugin_backup = manifests(PRODUCTION).get("ScheduledBackup", "meshed-pg-daily")
    wrong_method = copy.deepcopy(plugin_backup)
    wrong_method["spec"]["method"] = "barmanCloud"
    assert cnpg_validator.errors(wrong_method)


PLUGIN = "barman-cloud.cloudnative-pg.io"
BACKUP_LOCATION = REPO_ROOT / "k8s/overlays/production/postgres/backup-location.env"


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
    assert not manifests("k8s/overlays/local").of_kind("Cluster")


def test_backups_go_through_the_barman_cloud_plugin(manifests):
    """WAL archiving and backups through the plugin's ObjectStore; nothing left of the in-tree
    barmanObjectStore (deprecated since 1.26, removed in 1.31)."""
    m = manifests(PRODUCTION)
    spec = m.get("Cluster", CLUSTER)["spec"]
    assert "backup" not in spec, "the in-tree barmanObjectStore is deprecated: use the plugin"
    (plugin,) = spec["plugins"]
    assert plugin["name"] == PLUGIN and plugin["isWALArchiver"] is True and plugin.get("enabled", True)
    store = m.get("ObjectStore", plugin["parameters"]["barmanObjectName"])
    assert store is not None and store["apiVersion"] == "barmancloud.cnpg.io/v1"
    assert store["spec"]["retentionPolicy"]
    # The plugin's own serverName must stay empty in the ObjectStore (plugin docs, "Parameters").
    assert "serverName" not in store["spec"]["configuration"]
    (backup,) = m.of_kind("ScheduledBackup")
    assert backup["spec"]["cluster"]["name"] == CLUSTER
    assert backup["spec"]["method"] == "plugin" and backup["spec"]["pluginConfiguration"]["name"] == PLUGIN
    assert len(backup["spec"]["schedule"].split()) == 6  # CNPG's cron has seconds first


def test_backup_alerts_name_the_production_cluster_and_its_immediate_backup(manifests):
    """CNPGBackupMetricsAbsent can only say "absent" for a cluster it names (absent() has no labels to
    group by), and CNPGNoBaseBackup's two hours assume the first backup starts when the cluster does."""
    m = manifests(PRODUCTION)
    cluster = m.get("Cluster", CLUSTER)
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((REPO_ROOT / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    absent = rules["CNPGBackupMetricsAbsent"]["expr"]
    selector = re.fullmatch(r"absent\((\w+)\{(.*)\}\)", absent.strip())
    assert selector, absent
    labels = dict(re.findall(r'(\w+)="([^"]*)"', selector.group(2)))
    assert labels == {"namespace": cluster["metadata"]["namespace"], "cluster": cluster["metadata"]["name"]}
    assert (
        selector.group(1) in rules["CNPGBackupTooOld"]["expr"]
        and selector.group(1) in rules["CNPGNoBaseBackup"]["expr"]
    )
    (backup,) = m.of_kind("ScheduledBackup")
    assert backup["spec"]["immediate"] is True


def test_archive_path_is_the_installations_own(manifests, tmp_path, kubectl):
    """destinationPath is what backup-location.env says (the deploy path writes it per installation),
    not a path fixed in the manifests: another value there gives another path in the ObjectStore."""
    m = manifests(PRODUCTION)
    location = dict(
        line.split("=", 1) for line in BACKUP_LOCATION.read_text().splitlines() if line and not line.startswith("#")
    )
    store = m.get("ObjectStore", "meshed-pg-backups")
    assert store["spec"]["configuration"]["destinationPath"] == location["destinationPath"]
    copy_root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "k8s", copy_root / "k8s")
    (copy_root / "k8s/overlays/production/postgres/backup-location.env").write_text(
        "destinationPath=s3://another-bucket/meshed-pg/0b6a-20261206T120000Z\n"
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(copy_root / PRODUCTION)], capture_output=True, text=True, check=True
    ).stdout
    (other,) = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "ObjectStore"]
    assert other["spec"]["configuration"]["destinationPath"] == "s3://another-bucket/meshed-pg/0b6a-20261206T120000Z"


def test_instances_and_jobs_skip_the_injector_by_label(manifests):
    """The opt-out is the label: Istio's webhook selects pods with `sidecar.istio.io/inject NotIn
    [false]` (objectSelector), so labelled pods never reach istiod; the annotation is only read by
    istiod itself, after the webhook was called (failurePolicy Fail: no istiod, no pod)."""
    metadata = manifests(PRODUCTION).get("Cluster", CLUSTER)["spec"]["inheritedMetadata"]
    assert metadata["labels"]["sidecar.istio.io/inject"] == "false"
    assert "sidecar.istio.io/inject" not in metadata.get("annotations", {})


def quantity_bytes(value: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "kB": 1024, "MB": 1024**2, "GB": 1024**3}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value[: -len(suffix)]) * factor
    return int(value)


def test_memory_settings_and_connection_budget_fit(manifests):
    """max_connections covers every connection the services can open at their HPAs' maximum (each
    worker's pool plus its readiness connection, plus a migrate per service), and PostgreSQL's memory
    settings fit the container: shared buffers a quarter of it, and one work_mem per connection
    on top still inside the limit."""
    m = manifests(PRODUCTION)
    spec = m.get("Cluster", CLUSTER)["spec"]
    parameters = spec["postgresql"]["parameters"]
    max_connections = int(parameters["max_connections"])
    needed = 0
    for app in APPS:
        env = m.container_env(app_container(m.get("Deployment", app)))
        hpa = m.get("HorizontalPodAutoscaler", app)
        per_pod = int(env["GUNICORN_WORKERS"]) * (int(env["DATABASE_POOL_SIZE"]) + 1)
        needed += hpa["spec"]["maxReplicas"] * per_pod + 1  # + the migrate init container
    reserved = 3 + 5  # superuser_reserved_connections, the instance manager and exporter
    assert needed + reserved <= max_connections, (needed, reserved, max_connections)
    assert max_connections <= needed * 1.5, "max_connections far above what can connect: memory spent for nothing"
    limit = quantity_bytes(spec["resources"]["limits"]["memory"])
    assert spec["resources"]["requests"]["memory"] == spec["resources"]["limits"]["memory"]
    shared_buffers = quantity_bytes(parameters["shared_buffers"])
    assert limit // 5 <= shared_buffers <= limit // 4
    work_mem = quantity_bytes(parameters["work_mem"])
    maintenance = quantity_bytes(parameters["maintenance_work_mem"])
    # Measured in docs/sizing.md: a backend at rest holds under 2 MiB of its own; 4 MiB with margin.
    per_backend = 4 * 1024**2
    autovacuum_workers = 3
    worst = shared_buffers + max_connections * (per_backend + work_mem) + autovacuum_workers * maintenance
    assert worst <= limit * 0.9, f"{worst / 1024**2:.0f} MiB of {limit / 1024**2:.0f} MiB"


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


def test_prometheus_reaches_the_exporter_and_nothing_else(manifests):
    """Port 9187 (the instances' exporter) is open to Istio's Prometheus addon only, and that peer
    reaches no other port of the instances."""
    policy = manifests(PRODUCTION).get("NetworkPolicy", CLUSTER)
    exporter_peers, prometheus_ports = [], set()
    for rule in policy["spec"]["ingress"]:
        ports = {port["port"] for port in rule["ports"]}
        for peer in rule["from"]:
            is_prometheus = peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "prometheus"}
            if 9187 in ports:
                exporter_peers.append(peer)
            if is_prometheus:
                prometheus_ports |= ports
    assert exporter_peers == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    assert prometheus_ports == {9187}

"""deploy/k8s checked offline, and `sweeplab worker --once` as batch jobs (deploy/slurm) use it.

No cluster here: the core kinds are validated against Kubernetes' own schemas (the
kubernetes-validate package ships them), KEDA's objects against a JSON Schema of the fields used
(its CRDs are not in that package), and the manifests against sweeplab itself: real subcommands,
real settings, a probe path the app serves, names that refer to each other, and the KEDA query run
on the test database (SQLite or PostgreSQL) next to an independent count.
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
import time
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import Engine, text, update
from sqlalchemy.engine import make_url

from app.config import PROJECT_ROOT, Settings
from app.db import write_session
from app.models import Run, RunSource, RunStatus
from app.services.queue import claim_runs
from sweeplab.cli import build_parser
from tests.factories import get_run, make_sweep, runs_of
from worker.main import Worker

K8S = PROJECT_ROOT / "deploy" / "k8s"
# The oldest Kubernetes still common in managed clusters, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
KEDA_API = "keda.sh/v1alpha1"

Doc = dict[str, Any]


def kustomization() -> Doc:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def documents() -> list[Doc]:
    """Every object the kustomization applies, in its order."""
    return [doc for name in kustomization()["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc is not None]


def one(kind: str, name: str | None = None) -> Doc:
    found = [d for d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name!r}"
    return found[0]


def workloads() -> list[Doc]:
    return [d for d in documents() if d["kind"] in ("Deployment", "StatefulSet")]


def containers(workload: Doc) -> list[Doc]:
    return workload["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def sweeplab_containers() -> list[tuple[Doc, Doc]]:
    """(workload, container) for every container that runs the sweeplab image."""
    return [(w, c) for w in workloads() for c in containers(w) if c["image"].split(":")[0] == "sweeplab"]


# ---- the core kinds, by Kubernetes' own schemas

def test_kustomization_lists_every_manifest_and_only_those() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(version: str) -> None:
    """Strict: an unknown field (a typo) fails as well as a wrong type or a missing required field."""
    core = [d for d in documents() if d["apiVersion"] != KEDA_API]
    assert {d["kind"] for d in core} == {"Namespace", "Secret", "Service", "StatefulSet", "PersistentVolumeClaim",
                                         "Deployment"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(one("Deployment", "sweeplab-worker"))  # the check has teeth
    containers(broken)[0]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
def test_kustomize_builds_every_object_into_the_namespace() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in objects) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in documents())
    namespace = kustomization()["namespace"]
    assert all(d["metadata"].get("namespace") == namespace for d in objects if d["kind"] != "Namespace")


# ---- KEDA's objects, by a schema of the fields used (KEDA 2.x CRDs and the postgresql scaler's metadata)

STRING = {"type": "string", "minLength": 1}
NUMBER_STRING = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}  # KEDA's metadata is map[string]string
COUNT = {"type": "integer", "minimum": 0}
META = {"type": "object", "required": ["name"], "properties": {"name": STRING}}

POSTGRESQL_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "query": STRING, "targetQueryValue": NUMBER_STRING, "activationTargetQueryValue": NUMBER_STRING,
        "connectionFromEnv": STRING, "host": STRING, "port": {"type": "string", "pattern": r"^[0-9]+$"},
        "userName": STRING, "dbName": STRING, "passwordFromEnv": STRING,
        "sslmode": {"enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]},
    },
    "required": ["query", "targetQueryValue"],
    # KEDA: a whole connection string, or every part of one (the password from auth or an env var).
    "anyOf": [{"required": ["connectionFromEnv"]}, {"required": ["host", "port", "userName", "dbName", "sslmode"]}],
}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA_API}, "kind": {"const": "ScaledObject"}, "metadata": META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                                   "properties": {"name": STRING, "kind": STRING, "apiVersion": STRING,
                                                  "envSourceContainerName": STRING}},
                "pollingInterval": {"type": "integer", "minimum": 1}, "cooldownPeriod": COUNT,
                "initialCooldownPeriod": COUNT, "idleReplicaCount": COUNT, "minReplicaCount": COUNT,
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        # behavior: checked below as an autoscaling/v2 HorizontalPodAutoscaler's
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": STRING, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "postgresql"}, "name": STRING, "metadata": POSTGRESQL_METADATA,
                            "metricType": {"enum": ["AverageValue", "Value"]}, "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object", "additionalProperties": False, "required": ["name"],
                                "properties": {
                                    "name": STRING,
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA_API}, "kind": {"const": "TriggerAuthentication"}, "metadata": META,
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["secretTargetRef"],
            "properties": {"secretTargetRef": {
                "type": "array", "minItems": 1,
                "items": {"type": "object", "additionalProperties": False, "required": ["parameter", "name", "key"],
                          # the postgresql scaler's parameters that may come from authentication
                          "properties": {"parameter": {"enum": ["connection", "host", "port", "userName", "dbName",
                                                                "sslmode", "password"]},
                                         "name": STRING, "key": STRING}},
            }},
        },
    },
}


def scaled_object() -> Doc:
    return one("ScaledObject")


def test_keda_objects_match_the_schema_of_their_fields() -> None:
    jsonschema.validate(scaled_object(), SCALED_OBJECT)
    jsonschema.validate(one("TriggerAuthentication"), TRIGGER_AUTHENTICATION)
    spec = scaled_object()["spec"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "check"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                    "maxReplicas": spec["maxReplicaCount"], "behavior": behavior}}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


@pytest.mark.parametrize("mistake", ["port as a number", "unknown key", "scaler name", "no target", "no host"])
def test_the_keda_schema_rejects_common_mistakes(mistake: str) -> None:
    broken = copy.deepcopy(scaled_object())
    metadata = broken["spec"]["triggers"][0]["metadata"]
    if mistake == "port as a number":
        metadata["port"] = 5432
    elif mistake == "unknown key":
        metadata["hostname"] = metadata.pop("host")
    elif mistake == "scaler name":
        broken["spec"]["triggers"][0]["type"] = "postgres"
    elif mistake == "no target":
        del metadata["targetQueryValue"]
    else:
        del metadata["host"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT)


# ---- the manifests against each other and against sweeplab

def secret_values() -> dict[str, str]:
    return one("Secret", "sweeplab-secrets")["stringData"]  # type: ignore[no-any-return]


def test_the_scaled_object_scales_the_worker_deployment_with_the_databases_credentials() -> None:
    spec = scaled_object()["spec"]
    worker = one("Deployment", spec["scaleTargetRef"]["name"])
    assert [c["command"][:2] for c in containers(worker)] == [["sweeplab", "worker"]]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    (trigger,) = spec["triggers"]
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = one("Secret", auth["spec"]["secretTargetRef"][0]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert "password" in {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    # KEDA reaches the database the workers use: same host, port, user, database and password.
    metadata, url = trigger["metadata"], make_url(secret_values()["database-url"])
    service = one("Service", url.host)
    assert metadata["host"] == f"{url.host}.{kustomization()['namespace']}.svc.cluster.local"
    assert int(metadata["port"]) == url.port == service["spec"]["ports"][0]["port"]
    assert metadata["userName"] == url.username and metadata["dbName"] == url.database
    password_key = next(r["key"] for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "password")
    assert url.password == secret_values()[password_key]
    assert url.drivername == "postgresql+psycopg"


def test_postgres_statefulset_serves_the_database_the_url_names() -> None:
    url = make_url(secret_values()["database-url"])
    postgres = one("StatefulSet", "sweeplab-postgres")
    assert postgres["spec"]["serviceName"] == url.host
    env = {e["name"]: e for e in containers(postgres)[0]["env"]}
    assert env["POSTGRES_USER"]["value"] == url.username and env["POSTGRES_DB"]["value"] == url.database
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret_values()[ref["key"]] == url.password
    assert [t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]] == [
        m["name"] for m in containers(postgres)[0]["volumeMounts"]]


def test_references_resolve_services_select_pods_and_ports_exist() -> None:
    secrets = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "Secret"}
    claims = {d["metadata"]["name"] for d in documents() if d["kind"] == "PersistentVolumeClaim"}
    for workload in workloads():
        pod = workload["spec"]["template"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in secrets[ref["name"]]["stringData"], env["name"]
    for service in (d for d in documents() if d["kind"] == "Service"):
        selected = [w for w in workloads()
                    if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]
        port_names = {p["name"] for c in containers(selected[0]) for p in c.get("ports", [])}
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])


def test_every_container_runs_a_real_sweeplab_command_with_real_settings(settings: Settings, engine: Engine) -> None:
    """The CLI's own parser accepts each command line; every variable is a Settings field, and the
    values (secrets from the example Secret) make valid Settings; each probe's path answers 200 from
    the app on a migrated database."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    client = TestClient(create_app(settings))
    found = set()
    for workload, container in sweeplab_containers():
        command = container["command"] + container.get("args", [])
        assert command[0] == "sweeplab"
        args = build_parser().parse_args(command[1:])
        found.add(args.command)
        values: dict[str, Any] = {}
        for env in container.get("env", []):
            name = env["name"]
            assert name.startswith("SWEEPLAB_") and name[len("SWEEPLAB_"):].lower() in Settings.model_fields, name
            values[name[len("SWEEPLAB_"):].lower()] = env_value(env, container)
        Settings(_env_file=None, **values)  # type: ignore[call-arg]
        if args.command == "serve":
            assert args.host == "0.0.0.0"
            assert [p["containerPort"] for p in container["ports"]] == [args.port]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                answer = client.get(container[probe]["httpGet"]["path"])
                assert answer.status_code == 200, (workload["metadata"]["name"], probe, answer.text)
    assert found == {"serve", "worker"}


def env_value(env: Doc, container: Doc) -> str:
    if "value" in env:
        return str(env["value"])
    source = env["valueFrom"]
    if "secretKeyRef" in source:
        return secret_values()[source["secretKeyRef"]["key"]]
    field = source["resourceFieldRef"]
    assert field["containerName"] == container["name"]
    kind, resource = field["resource"].split(".")
    quantity = str(container["resources"][kind][resource])
    cores = int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return str(math.ceil(cores / float(field.get("divisor", "1"))))


def test_the_worker_has_time_to_release_its_runs_on_sigterm() -> None:
    worker = one("Deployment", scaled_object()["spec"]["scaleTargetRef"]["name"])
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    # A training program gets its kill grace, then the release needs a few database round trips.
    assert grace >= defaults.program_kill_grace_seconds + 30


# ---- the KEDA query on a real database

def keda_query() -> str:
    return str(scaled_object()["spec"]["triggers"][0]["metadata"]["query"])


def test_the_keda_query_counts_the_runs_workers_still_have_to_train(engine: Engine) -> None:
    first = make_sweep(engine, replicates=3, grid={"model.hidden": [[4], [8]]})  # 6 runs
    second = make_sweep(engine, replicates=2)  # 2 runs
    with engine.connect() as conn:
        assert conn.execute(text(keda_query())).scalar_one() == 8  # everything queued
    claim_runs(engine, "w1", 3, 60.0)  # config 1's three runs: running
    ids = [r.id for r in runs_of(engine, first.id)]
    with write_session(engine) as s:
        s.execute(update(Run).where(Run.id == ids[0]).values(status=RunStatus.SUCCEEDED.value))
        s.execute(update(Run).where(Run.id == ids[3]).values(status=RunStatus.CANCELLED.value))
        s.execute(update(Run).where(Run.id == ids[4]).values(program="train_cnn"))  # no such worker here
        s.execute(update(Run).where(Run.id == runs_of(engine, second.id)[0].id)
                  .values(source=RunSource.EXTERNAL.value, status=RunStatus.RUNNING.value))
    runs = runs_of(engine, first.id) + runs_of(engine, second.id)
    expected = sum(1 for r in runs if r.source == RunSource.QUEUE.value and r.program is None
                   and r.status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value))
    with engine.connect() as conn:
        counted = conn.execute(text(keda_query())).scalar_one()
    assert counted == expected == 4  # two running, one queued of sweep 1; one queued of sweep 2
    assert isinstance(counted, int)  # KEDA's scaler reads one integer


# ---- `sweeplab worker --once`: exits when nothing is left it can claim, after one grace poll

def test_a_once_worker_with_nothing_to_claim_exits_after_one_grace_poll(settings: Settings, engine: Engine) -> None:
    started = time.monotonic()
    assert Worker(settings.model_copy(update={"poll_seconds": 0.4}), engine).run(once=True) == 0
    assert 0.4 <= time.monotonic() - started < 5


def test_a_once_worker_takes_a_run_whose_lease_expires_during_its_grace_poll(settings: Settings,
                                                                              engine: Engine) -> None:
    """A task of an array job finishing last must not leave a dead task's run behind when its lease
    has just expired: the grace poll reaps before it looks again."""
    make_sweep(engine, epochs=2)
    (claim,) = claim_runs(engine, "dead-task", 1, 0.6)
    claimed = time.monotonic()
    # The worker's own reaper thread waits a minute: only the grace poll's reap can requeue the run.
    worker = Worker(settings.model_copy(update={"reap_seconds": 60.0, "poll_seconds": 0.9}), engine)
    assert time.monotonic() - claimed < 0.4  # the lease still runs when the worker starts
    assert worker.run(once=True) == 1
    run = get_run(engine, claim.run_id)
    assert (run.status, run.attempt, run.worker_id) == (RunStatus.SUCCEEDED.value, 2, worker.worker_id)


def test_the_slurm_script_runs_the_once_worker() -> None:
    """The batch script's last command is the worker that exits on an empty queue, exec'd so that
    Slurm's SIGTERM reaches it (tests/e2e/test_deploy.py runs the script itself)."""
    script = (PROJECT_ROOT / "deploy" / "slurm" / "sweeplab-array.sbatch").read_text()
    lines = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[-1] == "exec sweeplab worker --once"
    assert build_parser().parse_args(lines[-1].split()[2:]).once
    directives = [ln.split()[1] for ln in script.splitlines() if ln.startswith("#SBATCH ")]
    names = {d.split("=")[0] for d in directives}
    assert {"--array", "--cpus-per-task", "--mem", "--time", "--output", "--error", "--signal"} <= names
    assert "--signal=B:TERM@120" in directives  # B: the batch shell, which exec made the worker


"""deploy/ (Helm values + the instance config it renders), dagster_cloud.yaml and the GPU job's tag agree, and parse.

There is no `helm` here, so `rendered_instance_settings` restates, for the keys this deployment sets, what the
dagster/dagster chart's templates (configmap-instance.yaml and helpers/instance/*.tpl) make of values.yaml; the test
compares that with deploy/dagster.yaml, which Dagster itself then loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext

from emilia_assets import gpu_definitions
from emilia_assets.placement import (
    CPU_CONTAINER_CONTEXT,
    CPU_RUN_K8S_CONFIG,
    GPU_CONTAINER_CONTEXT,
    GPU_RUN_K8S_CONFIG,
    K8S_CONFIG_TAG,
)
from emilia_assets.pools import GPU_POOL
from tests.k8s_fixture import DEPLOY, ROOT, RecordingKubeApi, deploy_instance_config, sqlite_storage

RELEASE, NAMESPACE = "dagster", "emilia"  # as deploy/README.md installs it


def values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in values()["dagster-user-deployments"]["deployments"]}


def container_context_of(deployment: dict) -> dict:
    (var,) = [e for e in deployment["env"] if e["name"] == "DAGSTER_CONTAINER_CONTEXT"]
    return json.loads(var["value"])


def _names(refs: list[dict]) -> list[str]:
    return [r["name"] for r in refs]


def rendered_instance_settings(v: dict) -> dict:
    """The chart's rendering of the instance keys this deployment relies on (see the module docstring)."""
    launcher = v["runLauncher"]["config"]["k8sRunLauncher"]
    pg = v["postgresql"]
    mon = v["dagsterDaemon"]["runMonitoring"]
    qrc = v["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    conc = v["concurrency"]
    retries = v["dagsterDaemon"]["runRetries"]
    rendered = {
        "run_launcher": {
            "module": "dagster_k8s", "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": launcher["loadInclusterConfig"],
                "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
                "image_pull_policy": launcher["imagePullPolicy"],
                "service_account_name": RELEASE,  # dagster.serviceAccountName: the fullname by default
                "dagster_home": v["global"]["dagsterHome"],
                "instance_config_map": f"{RELEASE}-instance",
                "postgres_password_secret": v["global"]["postgresqlSecretName"],
                "env_config_maps": _names(launcher["envConfigMaps"]),
                "env_secrets": _names(launcher["envSecrets"]),
                "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
            },
        },
        "postgres_db": {
            "username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": f"{RELEASE}-postgresql" if pg["enabled"] else pg["postgresqlHost"],
            "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"], "params": pg["postgresqlParams"],
            **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {}),
        },
        # _run-coordinator.tpl renders `config:` (with max_concurrent_runs: -1) once any value is non-empty.
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator",
                            **({"config": "rendered"} if any(qrc.values()) else {})},
        "run_monitoring": {
            "enabled": mon["enabled"], "start_timeout_seconds": mon["startTimeoutSeconds"],
            "max_resume_run_attempts": mon["maxResumeRunAttempts"],
            "poll_interval_seconds": mon["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": mon["freeSlotsAfterRunEndSeconds"],
        },
        "telemetry": {"enabled": v["telemetry"]["enabled"]},
        "run_retries": {"enabled": retries["enabled"], "max_retries": retries["maxRetries"],
                        "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"]},
    }
    if conc["enabled"]:
        rendered["concurrency"] = {
            "pools": {"granularity": conc["pools"]["granularity"], "default_limit": conc["pools"]["defaultLimit"]},
            "runs": {"max_concurrent_runs": conc["runs"]["maxConcurrentRuns"]},
        }
    return rendered


def test_values_render_the_instance_config_in_deploy():
    rendered, deployed = rendered_instance_settings(values()), deploy_instance_config()
    assert rendered["run_launcher"] == deployed["run_launcher"]
    assert rendered["run_coordinator"] == deployed["run_coordinator"]
    assert rendered["run_monitoring"] == deployed["run_monitoring"]
    assert rendered["concurrency"] == deployed["concurrency"]
    assert rendered["telemetry"] == deployed["telemetry"]
    assert rendered["run_retries"] == deployed["run_retries"]
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        assert deployed[key]["config"]["postgres_db"] == rendered["postgres_db"], key


def test_deployed_instance_config_passes_dagsters_schema(tmp_path):
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0  # pool slots of killed pods come back
    assert config["concurrency"]["pools"]["granularity"] == "run"  # a slot is a run (a GPU node), not an op


def test_deployed_instance_loads_with_the_k8s_launcher_and_the_gpu_pool(tmp_path):
    """The whole instance from deploy/dagster.yaml, storage swapped for SQLite and the launcher pointed at a
    kubeconfig (it loads one when constructed)."""
    with RecordingKubeApi() as api:
        config = sqlite_storage(deploy_instance_config(), tmp_path / "storage")
        config["run_launcher"]["config"].update(load_incluster_config=False,
                                                kubeconfig_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            launcher = instance.run_launcher
            assert isinstance(launcher, K8sRunLauncher)
            assert launcher.job_namespace == NAMESPACE
            assert set(launcher.env_secrets) == {"r2-credentials", "hf-token"}
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            pools = instance.get_concurrency_config().pool_config
            assert pools.pool_granularity.value == "run"
            assert pools.default_pool_limit == values()["concurrency"]["pools"]["defaultLimit"]
            assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 64
            assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
            # A lost pod: monitoring can see it (the launcher checks the Job), fails the run rather than resuming
            # it in place, and the retry daemon re-executes it; a failed step is left to the step's RetryPolicy.
            assert launcher.supports_check_run_worker_health and instance.run_monitoring_enabled
            assert instance.run_monitoring_max_resume_run_attempts == 0
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
            assert instance.run_retries_retry_on_asset_or_op_failure is False


def test_queued_run_coordinator_values_stay_empty_next_to_concurrency():
    """A value under queuedRunCoordinator makes the chart render max_concurrent_runs: -1, which Dagster refuses next
    to `concurrency.runs` ("incompatible with the concurrency > runs config")."""
    config = deploy_instance_config()
    config["run_coordinator"]["config"] = {"max_concurrent_runs": -1}
    with pytest.raises(dg.DagsterInvalidConfigError, match="concurrency > runs"):
        from dagster._core.instance.config import validate_concurrency_config

        validate_concurrency_config(config)
    assert not any(values()["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"].values())


def test_each_location_places_its_runs_and_the_gpu_one_alone_asks_for_gpus():
    deps = deployments()
    gpu, cpu = deps["emilia-gpu"], deps["emilia-forge"]
    assert container_context_of(gpu) == GPU_CONTAINER_CONTEXT
    assert container_context_of(cpu) == CPU_CONTAINER_CONTEXT
    # The chart would otherwise replace our DAGSTER_CONTAINER_CONTEXT with its own (no node selector, no tolerations).
    assert gpu["includeConfigInLaunchedRuns"] == {"enabled": False} == cpu["includeConfigInLaunchedRuns"]
    assert "nvidia.com/gpu" not in json.dumps(cpu) and "nvidia.com/gpu" not in json.dumps(gpu["resources"])
    for ctx in (container_context_of(gpu), container_context_of(cpu)):
        K8sContainerContext.create_from_config(ctx)  # Dagster accepts it


def test_helm_locations_match_workspace_yaml():
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    local = {e["python_module"]["location_name"]: e["python_module"]["module_name"] for e in workspace}
    servers = values()["dagsterWebserver"]["workspace"]["servers"]
    deps = deployments()
    helm = {s["name"]: deps[s["host"]]["dagsterApiGrpcArgs"][1] for s in servers}
    assert helm == local == {"emilia_forge": "emilia_assets.definitions", "emilia_gpu": "emilia_assets.gpu_definitions"}
    assert all(deps[s["host"]]["port"] == s["port"] for s in servers)


def test_dagster_cloud_yaml_places_the_same_way():
    locations = {loc["location_name"]: loc for loc in yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())[
        "locations"]}
    assert set(locations) == {"emilia_forge", "emilia_gpu"}
    assert locations["emilia_gpu"]["code_source"]["module_name"] == "emilia_assets.gpu_definitions"
    assert locations["emilia_gpu"]["container_context"]["k8s"]["run_k8s_config"] == GPU_RUN_K8S_CONFIG
    assert locations["emilia_forge"]["container_context"]["k8s"]["run_k8s_config"] == CPU_RUN_K8S_CONFIG
    for loc in locations.values():
        K8sContainerContext.create_from_config(loc["container_context"])


def test_gpu_job_carries_the_gpu_placement_as_its_own_tag():
    job = gpu_definitions.defs().resolve_job_def("emilia_job")
    assert json.loads(job.tags[K8S_CONFIG_TAG]) == GPU_RUN_K8S_CONFIG
    assert gpu_definitions.defs().resolve_assets_def("processed_segments").op.pool == GPU_POOL


def test_job_run_retry_tags_match_the_instance_and_the_gpu_step_retries_itself():
    """Every job says what deploy/dagster.yaml says about run retries (a run of a Dagster+ deployment, or of an
    instance without run_retries, gets the same rule), and processed_segments has its own step RetryPolicy."""
    retries = deploy_instance_config()["run_retries"]
    expected = {"dagster/max_retries": str(retries["max_retries"]),
                "dagster/retry_on_asset_or_op_failure": str(retries["retry_on_asset_or_op_failure"]).lower()}
    from emilia_assets import definitions

    for defs in (gpu_definitions.defs(), definitions.defs()):
        for job in defs.jobs:
            if job.name.startswith("__"):
                continue
            assert {k: job.tags.get(k) for k in expected} == expected, job.name
    policy = gpu_definitions.defs().resolve_assets_def("processed_segments").op.retry_policy
    assert policy is not None and policy.max_retries >= 1 and policy.delay and policy.backoff is not None
    local = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())["run_retries"]
    assert local["enabled"] and local["retry_on_asset_or_op_failure"] is False



def test_courtesy_rbac_is_valid_and_bound_to_the_code_servers_account():
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all((DEPLOY / "courtesy-rbac.yaml").read_text()) if d]
    account = values()["dagster-user-deployments"]["serviceAccount"]["name"]
    namespace = "emilia"  # the release's namespace, as in deploy/README.md
    for version in ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"):
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert len(bindings) == 2
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    rules = {d["kind"]: d["rules"] for d in docs if d["kind"] in ("ClusterRole", "Role")}
    assert {"list"} <= set(rules["ClusterRole"][0]["verbs"]) and rules["ClusterRole"][0]["resources"] == ["pods"]
    assert "delete" in rules["Role"][0]["verbs"] and rules["Role"][0]["resources"][0] == "jobs"


def test_settings_read_at_load_come_from_the_environment_and_bad_ones_name_themselves():
    """Step retries and sensor intervals are read when the code location loads: a typo in a pod's env must fail
    that load naming the variable, not become a traceback from int()."""

    def load(code: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **env})

    retry = "from emilia_assets.assets.process import RETRY_POLICY as p; print(p.max_retries, p.delay)"
    assert load(retry, PROCESS_RETRIES="0", PROCESS_RETRY_DELAY_S="2.5").stdout.split() == ["0", "2.5"]
    bad = load(retry, PROCESS_RETRY_DELAY_S="a minute")
    assert bad.returncode != 0
    assert "PROCESS_RETRY_DELAY_S='a minute': expected a number >= 0" in bad.stderr

    sensor = "from sensors.gpu_batch import gpu_batch_sensor as s; print(s.minimum_interval_seconds)"
    assert load(sensor, GPU_BATCH_SENSOR_INTERVAL_S="7").stdout.split() == ["7"]
    bad = load(sensor, GPU_BATCH_SENSOR_INTERVAL_S="5s")
    assert bad.returncode != 0 and "GPU_BATCH_SENSOR_INTERVAL_S='5s': expected an integer >= 1" in bad.stderr

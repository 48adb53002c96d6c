"""The Helm chart, linted and rendered offline by the real Helm engine (helm-python-sdk binds
Helm's Go SDK, v4), for default and non-default values. Every rendered object must validate
strictly against the official `kubernetes` client's models (unknown fields refused)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from kubernetes import client

from services.natsauth import natsjwt
from services.topology.sources.live import resources
from shared.config import DEFAULT_CONFIGMAP_NAMESPACES, Settings
from shared.natsserver import nats_server_binary
from tests.deploy.chart import CHART, NAMESPACE, RELEASE, render

AGENT_CAPABILITIES = {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
STAGES = ("topology", "collector", "cloud", "simulator")

NON_DEFAULT: dict[str, Any] = {
    "image": {"repository": "registry.example.com/netdiag", "tag": "1.2.3"},
    "stages": {"topology": {"replicas": 2}, "collector": {"replicas": 5}, "cloud": {"replicas": 0},
               "simulator": {"replicas": 4, "resources": {"limits": {"cpu": "2", "memory": "2Gi"}}}},
    "gateway": {"replicas": 3, "ingress": {"enabled": True, "className": "nginx", "host": "nd.example.org",
                                           "tlsSecretName": "nd-tls"},
                "auth": {"tokens": ["0123456789abcdef0123", "fedcba9876543210fedc"]},
                "service": {"type": "LoadBalancer", "port": 8443}},
    "nats": {"external": {"url": "nats://nats-0.nats:4222,nats://nats-1.nats:4222"}, "streamReplicas": 3},
    "cloud": {"provider": "alibaba", "region": "cn-hangzhou",
              "credentials": {"accessKeyId": "LTAIexample", "accessKeySecret": "s3cr3t"}},
    "rbac": {"configMapNamespaces": ["kube-system", "kube-flannel"]},
    "networkPolicy": {"gatewayFrom": [{"namespaceSelector": {"matchLabels": {"team": "sre"}}}],
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    "metrics": {"enabled": False},
    "tracing": {"otlpEndpoint": "http://otel-collector.observability:4318"},
    "logLevel": "debug",
}


TOKEN_REVIEW: dict[str, Any] = {"gateway": {"auth": {"tokenReview": {
    "enabled": True, "audiences": ["netdiag"], "allowedGroups": ["system:serviceaccounts:ops", "sre"],
    "allowedUsers": ["system:serviceaccount:dev:alice"]}}}}


_SEED = natsjwt.new_seed()
CALLOUT: dict[str, Any] = {"nats": {"agentAuth": "callout", "authCallout": {
    "issuerPublicKey": natsjwt.public_key(natsjwt.keypair(_SEED)), "issuerSeed": _SEED.decode()}}}


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return manifests["netdiag/templates/NOTES.txt"]


def validate(obj: dict[str, Any]) -> Any:
    """Strict: the official client's pydantic model for the kind, unknown fields forbidden."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    assert group_version.endswith("v1"), f"{kind} uses {group_version}: only GA APIs"
    model = getattr(client, f"V1{kind}")
    parsed = model.model_validate(obj)
    assert parsed.metadata.name, obj
    return parsed


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [None, NON_DEFAULT, TOKEN_REVIEW, CALLOUT],
                         ids=["default", "non-default", "tokenreview", "callout"])
def test_chart_lints_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values", [None, NON_DEFAULT, TOKEN_REVIEW, CALLOUT],
                         ids=["default", "non-default", "tokenreview", "callout"])
def test_every_rendered_object_is_a_valid_kubernetes_object(values: dict[str, Any] | None) -> None:
    objects = render(values)
    assert len(objects) > 10
    for obj in objects:
        validate(obj)
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == RELEASE, obj["metadata"]["name"]
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "duplicate objects"


def test_default_install_workloads() -> None:
    objects = render()
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {f"{RELEASE}-netdiag-{n}" for n in (*STAGES, "gateway")}
    for name, dep in deployments.items():
        spec = pod_spec(dep)
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert container["resources"]["requests"], name
        env = {e["name"]: e for e in container["env"]}
        assert env["NETDIAG_NATS_URL"]["value"] == f"nats://{RELEASE}-netdiag-nats.{NAMESPACE}.svc:4222"
        assert env["NETDIAG_STREAM_REPLICAS"]["value"] == "3"
        # its own NATS identity for the simulator (only it may publish `completed`) and the gateway (only it
        # may write results); the other stages share `netdiag`
        user = next((u for u in ("simulator", "gateway") if name.endswith(u)), "netdiag")
        assert env["NETDIAG_NATS_USER"]["value"] == user, name
        assert env["NETDIAG_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == f"{user}-password"
        assert ("NETDIAG_RESULT_KEY" in env) is (user != "netdiag"), name  # the signer and the checker
        probes = (container.get("livenessProbe"), container.get("readinessProbe"))
        assert [p["httpGet"]["path"] for p in probes] == ["/healthz", "/readyz"], name
        # only the topology stage gets an API token
        assert spec["automountServiceAccountToken"] is name.endswith("topology"), name
    for stage in STAGES:
        args = pod_spec(deployments[f"{RELEASE}-netdiag-{stage}"])["containers"][0]["args"]
        assert args == ["python", "-m", f"services.{stage}"]

    gateway = pod_spec(deployments[f"{RELEASE}-netdiag-gateway"])["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {e["name"] for e in gateway["env"]} >= {"NETDIAG_AUTH_TOKENS_FILE", "NETDIAG_RATE_LIMIT_RPS"}
    auth = by_kind(objects, "Secret")[f"{RELEASE}-netdiag-auth"]
    assert len(auth["data"]["tokens"]) >= 40  # a generated token
    assert f"{RELEASE}-netdiag-gateway" in by_kind(objects, "Service")
    assert by_kind(objects, "Ingress") == {}


def test_agent_daemonset_has_only_what_it_needs() -> None:
    (agent,) = by_kind(render(), "DaemonSet").values()
    spec = pod_spec(agent)
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every taint
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["runAsUser"] == 0
    assert sc["capabilities"]["drop"] == ["ALL"] and set(sc["capabilities"]["add"]) == AGENT_CAPABILITIES
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert {v["name"]: v for v in spec["volumes"]}["netns"]["hostPath"]["path"] == "/var/run/netns"
    assert container["args"][-2:] == ["--node", "$(NODE_NAME)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NETDIAG_NATS_USER"]["value"] == "agent"  # the restricted NATS identity


def test_agent_capabilities_are_justified_in_the_template() -> None:
    text = (CHART / "templates" / "agent.yaml").read_text()
    for cap in AGENT_CAPABILITIES:
        comment = text.split(f"- {cap}")[0].rsplit("capabilities", 1)[-1]
        assert f"# {cap}:" in comment, f"{cap} has no justification comment"


def test_rbac_is_read_only_and_exactly_what_the_live_source_uses() -> None:
    objects = render()
    (role,) = by_kind(objects, "ClusterRole").values()
    granted = {(group, res): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
               for res in rule["resources"]}
    used = {r.kind for r in resources(client.ApiClient())}
    plural = {"Node": ("", "nodes"), "Namespace": ("", "namespaces"), "Pod": ("", "pods"),
              "Service": ("", "services"), "EndpointSlice": ("discovery.k8s.io", "endpointslices"),
              "NetworkPolicy": ("networking.k8s.io", "networkpolicies"), "DaemonSet": ("apps", "daemonsets"),
              "IPPool": ("crd.projectcalico.org", "ippools"),
              "FelixConfiguration": ("crd.projectcalico.org", "felixconfigurations"),
              "PodEIP": ("alibabacloud.com", "podeips")}
    assert set(granted) == {plural[k] for k in used if k != "ConfigMap"}
    assert all(verbs == {"list", "watch"} for verbs in granted.values())  # the informer lists and watches
    for config_role in (o for o in objects if o["kind"] == "Role"):
        assert config_role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]


@pytest.mark.parametrize("values", [None, NON_DEFAULT, {"rbac": {"configMapNamespaces": []}}],
                         ids=["default", "non-default", "none"])
def test_config_roles_cover_every_namespace_the_topology_stage_reads(values: dict[str, Any] | None) -> None:
    objects = render(values)
    topology = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-topology"])["containers"][0]
    env = {e["name"]: e["value"] for e in topology["env"] if "value" in e}
    read = Settings.model_validate({"configmap_namespaces": env["NETDIAG_CONFIGMAP_NAMESPACES"]}).configmap_namespaces
    roles = {o["metadata"]["namespace"]: o["metadata"]["name"] for o in objects if o["kind"] == "Role"}
    bindings = {(o["metadata"]["namespace"], o["roleRef"]["name"]) for o in objects if o["kind"] == "RoleBinding"}
    assert set(read) == set(roles) == set((values or {}).get("rbac", {}).get(
        "configMapNamespaces", DEFAULT_CONFIGMAP_NAMESPACES))
    assert all((ns, name) in bindings for ns, name in roles.items())


def test_default_nats_is_a_three_replica_jetstream_cluster() -> None:
    objects = render()
    (sts,) = by_kind(objects, "StatefulSet").values()
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    conf = by_kind(objects, "ConfigMap")[f"{RELEASE}-netdiag-nats-config"]["data"]["nats.conf"]
    assert "jetstream {" in conf and "cluster {" in conf
    assert conf.count(f"-headless.{NAMESPACE}.svc:6222") == 3
    assert "user: agent" in conf and '"netdiag.node.*.collect"' in conf
    assert "netdiag.diagnosis" not in conf.split("user: agent")[1]  # agents cannot publish diagnosis events
    assert f"{RELEASE}-netdiag-nats" in by_kind(objects, "PodDisruptionBudget")


def test_network_policies_deny_by_default() -> None:
    policies = by_kind(render(), "NetworkPolicy")
    assert set(policies) == {f"{RELEASE}-netdiag-{n}" for n in ("stages", "gateway", "nats")}
    stages = policies[f"{RELEASE}-netdiag-stages"]["spec"]
    assert stages["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in stages["ingress"] for p in rule["ports"]] == [9090]  # metrics only
    nats = policies[f"{RELEASE}-netdiag-nats"]["spec"]["ingress"]
    cluster_rule = next(r for r in nats if r["ports"][0]["port"] == 6222)
    assert cluster_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "nats"


def test_non_default_values_take_effect() -> None:
    objects = render(NON_DEFAULT)
    deployments = by_kind(objects, "Deployment")
    assert {n.removeprefix(f"{RELEASE}-netdiag-"): d["spec"]["replicas"] for n, d in deployments.items()} == {
        "topology": 2, "collector": 5, "cloud": 0, "simulator": 4, "gateway": 3}
    assert by_kind(objects, "StatefulSet") == {} and by_kind(objects, "ConfigMap") == {}  # external NATS
    cloud = pod_spec(deployments[f"{RELEASE}-netdiag-cloud"])
    container = cloud["containers"][0]
    assert container["image"] == "registry.example.com/netdiag:1.2.3"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NETDIAG_NATS_URL"] == NON_DEFAULT["nats"]["external"]["url"]
    assert env["NETDIAG_CLOUD_PROVIDER"] == "alibaba" and env["NETDIAG_CLOUD_REGION"] == "cn-hangzhou"
    assert env["NETDIAG_CLOUD_CREDENTIALS_FILE"] == "/var/run/secrets/netdiag/cloud"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert "NETDIAG_NATS_PASSWORD" not in env and "NETDIAG_METRICS_PORT" not in env
    secret = by_kind(objects, "Secret")[f"{RELEASE}-netdiag-cloud"]
    assert set(secret["data"]) == {"access-key-id", "access-key-secret"}  # the key files alibaba.py reads
    assert {v["name"]: v for v in cloud["volumes"]}["cloud-credentials"]["secret"]["secretName"] == secret[
        "metadata"]["name"]
    (ingress,) = by_kind(objects, "Ingress").values()
    assert ingress["spec"]["ingressClassName"] == "nginx" and ingress["spec"]["tls"][0]["secretName"] == "nd-tls"
    assert by_kind(objects, "Service")[f"{RELEASE}-netdiag-gateway"]["spec"]["type"] == "LoadBalancer"
    assert sorted(o["metadata"]["namespace"] for o in objects if o["kind"] == "Role") == ["kube-flannel",
                                                                                          "kube-system"]
    policies = by_kind(objects, "NetworkPolicy")
    assert f"{RELEASE}-netdiag-nats" not in policies
    assert policies[f"{RELEASE}-netdiag-stages"]["spec"]["ingress"] == []  # no metrics port: nothing may connect
    assert policies[f"{RELEASE}-netdiag-gateway"]["spec"]["ingress"][0]["from"] == NON_DEFAULT["networkPolicy"][
        "gatewayFrom"]


def test_existing_secrets_and_no_agent() -> None:
    objects = render({"agent": {"enabled": False}, "gateway": {"auth": {"existingSecret": "my-tokens"}},
                      "nats": {"auth": {"existingSecret": "my-nats"}, "replicas": 1},
                      "resultKey": {"existingSecret": "my-result-key"},
                      "cloud": {"provider": "alibaba", "credentials": {"existingSecret": "my-ak"}},
                      "rbac": {"create": False}, "serviceAccount": {"create": False, "name": "sa"}})
    for obj in objects:
        validate(obj)
    assert by_kind(objects, "DaemonSet") == {} and by_kind(objects, "Secret") == {}
    assert by_kind(objects, "ClusterRole") == {} and by_kind(objects, "ServiceAccount") == {}
    assert "cluster {" not in by_kind(objects, "ConfigMap")[f"{RELEASE}-netdiag-nats-config"]["data"]["nats.conf"]
    gateway = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-gateway"])
    assert {v["name"]: v for v in gateway["volumes"]}["auth"]["secret"]["secretName"] == "my-tokens"


def gateway_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    gateway = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-gateway"])["containers"][0]
    return {e["name"]: e["value"] for e in gateway["env"] if "value" in e}


def delegator_bindings(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "ClusterRoleBinding" and o["roleRef"]["name"] == "system:auth-delegator"]


def test_token_review_is_off_by_default() -> None:
    objects = render()
    assert delegator_bindings(objects) == []
    assert not any(k.startswith("NETDIAG_AUTH_TOKENREVIEW") for k in gateway_env(objects))
    gateway = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-gateway"])
    assert gateway["serviceAccountName"] == f"{RELEASE}-netdiag" and gateway["automountServiceAccountToken"] is False


def test_token_review_runs_the_gateway_as_its_own_auth_delegator() -> None:
    objects = render(TOKEN_REVIEW)
    for obj in objects:
        validate(obj)
    gateway = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-gateway"])
    account = f"{RELEASE}-netdiag-gateway"
    assert gateway["serviceAccountName"] == account and gateway["automountServiceAccountToken"] is True
    assert account in by_kind(objects, "ServiceAccount")
    (binding,) = delegator_bindings(objects)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "system:auth-delegator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # the gateway's account is granted nothing else: the cluster reader stays the topology stage's
    reader = by_kind(objects, "ClusterRoleBinding")[f"{RELEASE}-netdiag-reader"]
    assert [s["name"] for s in reader["subjects"]] == [f"{RELEASE}-netdiag"]
    # the environment is what Settings reads
    env = gateway_env(objects)
    settings = Settings.model_validate({k.removeprefix("NETDIAG_").lower(): v for k, v in env.items()
                                        if k.startswith("NETDIAG_AUTH_")})
    assert settings.auth_tokenreview is True and settings.auth_audiences == ("netdiag",)
    assert settings.auth_allowed_groups == ("system:serviceaccounts:ops", "sre")
    assert settings.auth_allowed_users == ("system:serviceaccount:dev:alice",)
    assert settings.auth_tokens_file is not None  # the static tokens keep working alongside
    text = notes(TOKEN_REVIEW)
    assert "create token SERVICEACCOUNT --audience netdiag" in text and "system:serviceaccounts:ops" in text


def test_token_review_with_an_existing_service_account_and_no_rbac() -> None:
    objects = render({**TOKEN_REVIEW, "rbac": {"create": False}, "serviceAccount": {"create": False, "name": "sa"}})
    gateway = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-gateway"])
    assert gateway["serviceAccountName"] == "sa" and gateway["automountServiceAccountToken"] is True
    assert delegator_bindings(objects) == [] and by_kind(objects, "ServiceAccount") == {}
    assert gateway_env(objects)["NETDIAG_AUTH_TOKENREVIEW"] == "true"


@pytest.mark.parametrize("bad", [
    {"stages": {"topology": {"replicas": -1}}},
    {"gateway": {"auth": {"tokens": ["short"]}}},
    {"gateway": {"auth": {"tokenReview": {"allowedGroups": ["a,b"]}}}},  # the list is passed comma-separated
    {"gateway": {"auth": {"tokenReview": {"enable": True}}}},
    {"nats": {"external": {"url": "http://not-nats"}}},
    {"cloud": {"provider": "aws"}},
    {"gatewy": {}},  # a typo is refused, not ignored
    {"nats": {"agentAuth": "token"}},
    {"nats": {"authCallout": {"issuerPublicKey": "not-an-nkey"}}},
    {"nats": {"authCallout": {"issuerSeed": "SUAxxx"}}},  # a user seed is not an account seed
])
def test_schema_refuses_invalid_values(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match=r"values don.t meet the specifications|schema"):
        render(bad)


def test_cloud_provider_without_credentials_fails_clearly() -> None:
    with pytest.raises(helm.HelmError, match=r"cloud\.credentials\.existingSecret"):
        render({"cloud": {"provider": "alibaba"}})


def test_notes_tell_how_to_open_the_ui_and_run_a_diagnosis() -> None:
    text = notes()
    assert f"port-forward svc/{RELEASE}-netdiag-gateway" in text
    assert "kubectl netdiag diagnose" in text and f"get secret {RELEASE}-netdiag-auth" in text


@pytest.mark.parametrize("values", [None, {"nats": {"replicas": 5, "auth": {"enabled": False}}}, CALLOUT],
                         ids=["default", "5-replicas-no-auth", "callout"])
def test_rendered_nats_config_is_accepted_by_nats_server(values: dict[str, Any] | None, tmp_path: Path) -> None:
    conf = by_kind(render(values), "ConfigMap")[f"{RELEASE}-netdiag-nats-config"]["data"]["nats.conf"]
    (tmp_path / "nats.conf").write_text(conf)
    env = {**os.environ, "POD_NAME": "nats-0", "NETDIAG_PASSWORD": "a", "AGENT_PASSWORD": "b",
           "NATS_AUTH_PASSWORD": "c", "SIMULATOR_PASSWORD": "d", "GATEWAY_PASSWORD": "e"}
    check = subprocess.run([nats_server_binary(), "-c", str(tmp_path / "nats.conf"), "-t"], env=env,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "is valid" in check.stdout + check.stderr, check.stderr


# ------------------------------------------------------------------ per-node agent identities (auth callout)


def test_agents_share_the_password_identity_by_default() -> None:
    objects = render()
    assert f"{RELEASE}-netdiag-nats-auth" not in by_kind(objects, "Deployment")
    conf = by_kind(objects, "ConfigMap")[f"{RELEASE}-netdiag-nats-config"]["data"]["nats.conf"]
    assert "auth_callout" not in conf and "user: agent," in conf


def test_callout_gives_each_agent_its_own_identity() -> None:
    objects = render(CALLOUT)
    conf = by_kind(objects, "ConfigMap")[f"{RELEASE}-netdiag-nats-config"]["data"]["nats.conf"]
    issuer = CALLOUT["nats"]["authCallout"]["issuerPublicKey"]
    assert f"issuer: {issuer}" in conf and "auth_users: [netdiag, simulator, gateway, nats-auth]" in conf
    assert "user: agent," not in conf  # no shared agent identity left
    nats_env = {e["name"] for e in pod_spec(by_kind(objects, "StatefulSet")[f"{RELEASE}-netdiag-nats"])
                ["containers"][0]["env"]}
    assert "NATS_AUTH_PASSWORD" in nats_env and "AGENT_PASSWORD" not in nats_env

    # the agent: its own ServiceAccount, a projected token for NATS, no password
    agent = pod_spec(by_kind(objects, "DaemonSet")[f"{RELEASE}-netdiag-agent"])
    assert agent["serviceAccountName"] == f"{RELEASE}-netdiag-agent"
    assert agent["automountServiceAccountToken"] is False  # only the NATS-audience token is mounted
    (projected,) = [v["projected"] for v in agent["volumes"] if "projected" in v]
    assert projected["sources"] == [{"serviceAccountToken": {"path": "token", "audience": "nats",
                                                             "expirationSeconds": 3600}}]
    env = {e["name"]: e for e in agent["containers"][0]["env"]}
    assert "NETDIAG_NATS_USER" not in env and "NETDIAG_NATS_PASSWORD" not in env
    mount = {m["name"]: m["mountPath"] for m in agent["containers"][0]["volumeMounts"]}["nats-token"]
    assert env["NETDIAG_NATS_TOKEN_FILE"]["value"] == f"{mount}/token"

    # nats-auth: its own auth-delegator ServiceAccount, the issuer seed, the agent's identity
    deployment = by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-nats-auth"]
    spec = pod_spec(deployment)
    account = f"{RELEASE}-netdiag-nats-auth"
    assert spec["serviceAccountName"] == account and spec["automountServiceAccountToken"] is True
    (container,) = spec["containers"]
    assert container["args"] == ["python", "-m", "services.natsauth"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    values = {e["name"]: e.get("value") for e in container["env"]}
    settings = Settings.model_validate({k.removeprefix("NETDIAG_").lower(): v for k, v in values.items()
                                        if k.startswith("NETDIAG_NATS") and v is not None})
    assert settings.nats_user == "nats-auth"
    assert settings.nats_auth_agent_user == f"system:serviceaccount:{NAMESPACE}:{RELEASE}-netdiag-agent"
    assert settings.nats_auth_audiences == ("nats",) and settings.nats_auth_user_ttl_s == 0
    seed_dir = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["issuer"]
    assert str(settings.nats_auth_issuer_seed_file) == f"{seed_dir}/issuer-seed"
    secret = {v["name"]: v for v in spec["volumes"]}["issuer"]["secret"]["secretName"]
    assert "issuer-seed" in by_kind(objects, "Secret")[secret]["data"]
    assert "nats-auth-password" in by_kind(objects, "Secret")[f"{RELEASE}-netdiag-nats-auth"]["data"]
    (binding,) = delegator_bindings(objects)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert {f"{RELEASE}-netdiag-agent", account} <= set(by_kind(objects, "ServiceAccount"))
    # NetworkPolicy: nothing may connect to nats-auth but scrapers
    stages_policy = by_kind(objects, "NetworkPolicy")[f"{RELEASE}-netdiag-stages"]
    assert "nats-auth" in stages_policy["spec"]["podSelector"]["matchExpressions"][1]["values"]


def test_callout_with_an_existing_issuer_secret() -> None:
    values = {"nats": {"agentAuth": "callout", "authCallout": {
        "issuerPublicKey": CALLOUT["nats"]["authCallout"]["issuerPublicKey"], "issuerExistingSecret": "my-issuer"}}}
    objects = render(values)
    spec = pod_spec(by_kind(objects, "Deployment")[f"{RELEASE}-netdiag-nats-auth"])
    assert {v["name"]: v for v in spec["volumes"]}["issuer"]["secret"]["secretName"] == "my-issuer"
    assert "my-issuer" not in by_kind(objects, "Secret")


def test_callout_without_an_issuer_fails_clearly() -> None:
    with pytest.raises(helm.HelmError, match=r"nats-auth keygen"):
        render({"nats": {"agentAuth": "callout"}})
    with pytest.raises(helm.HelmError, match=r"issuerPublicKey"):
        render({"nats": {"agentAuth": "callout", "authCallout": {"issuerSeed": _SEED.decode()}}})


def test_callout_needs_the_charts_own_nats() -> None:
    objects = render({**CALLOUT, "nats": {**CALLOUT["nats"], "external": {"url": "nats://nats:4222"}}})
    assert f"{RELEASE}-netdiag-nats-auth" not in by_kind(objects, "Deployment")
    assert "serviceAccountName" not in pod_spec(by_kind(objects, "DaemonSet")[f"{RELEASE}-netdiag-agent"])


def test_live_probe_is_off_by_default_and_adds_only_what_tracing_needs() -> None:
    (agent,) = by_kind(render(), "DaemonSet").values()
    (container,) = pod_spec(agent)["containers"]
    assert "NETDIAG_LIVE_PROBE" not in {e["name"] for e in container["env"]}
    (agent,) = by_kind(render({"liveProbe": {"enabled": True, "ratePerSecond": 2, "concurrency": 1}}),
                       "DaemonSet").values()
    spec = pod_spec(agent)
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["NETDIAG_LIVE_PROBE"], env["NETDIAG_PROBE_RATE_PER_S"], env["NETDIAG_PROBE_CONCURRENCY"]) == (
        "true", "2", "1")
    assert set(container["securityContext"]["capabilities"]["add"]) == AGENT_CAPABILITIES | {"BPF", "PERFMON"}
    assert container["securityContext"]["privileged"] is False
    assert {v["name"]: v for v in spec["volumes"]}["tracefs"]["hostPath"]["path"] == "/sys/kernel/tracing"
    text = (CHART / "templates" / "agent.yaml").read_text()
    assert "# BPF:" in text and "# PERFMON:" in text
    (agent,) = by_kind(render({"dropMetrics": {"enabled": True}}), "DaemonSet").values()
    (container,) = pod_spec(agent)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NETDIAG_DROP_METRICS"] == "true" and "NETDIAG_LIVE_PROBE" not in env
    assert {"BPF", "PERFMON"} <= set(container["securityContext"]["capabilities"]["add"])

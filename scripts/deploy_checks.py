#!/usr/bin/env python3
"""Offline checks for what ships in deploy/ and k8s/, beyond what promtool, envoy and
kubernetes-validate check on their own. Run with the venv's python (it needs PyYAML and
jsonschema, both installed with kubernetes-validate); scripts/test.sh and
scripts/validate-k8s.sh call it.

  deploy_checks.py dashboard FILE...        Grafana JSON: structure, known metric names, PromQL
                                            parses (every expr becomes a recording rule for
                                            `promtool check rules`)
  deploy_checks.py k8s FILE...              each FILE one rendered kustomization root (plus
                                            its generated Secrets): custom-resource kinds
                                            against the schemas below; envoy.yaml in
                                            ConfigMaps through `envoy --mode validate`;
                                            veto.toml / authority.toml (with the container's
                                            VETO__ env) through `veto check-config`; probe,
                                            gRPC, NetworkPolicy ports; nats URLs name the
                                            region's Service; every ConfigMap/Secret a pod
                                            uses exists; securityContext on every container;
                                            PrometheusRule == alerts.yaml
  deploy_checks.py crd-kinds                the (kind, apiVersion) pairs checked here, for
                                            validate-k8s.sh to accept kubernetes-validate's
                                            "no schema" warnings for exactly those
  deploy_checks.py write-prometheusrule     regenerate k8s/prometheusrule.yaml from alerts.yaml

Environment: VETO_ENVOY_BIN, PROMTOOL (scripts/env.sh sets both).
"""
from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy/prometheus/alerts.yaml"
PROMETHEUS_RULE = REPO / "k8s/base/monitoring/prometheusrule.yaml"
SIDECAR_TEMPLATE = REPO / "deploy/envoy/envoy-sidecar.yaml.tmpl"
INPROXY_TEMPLATE = REPO / "deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl"
DYNAMIC_MODULES = "envoy.filters.http.dynamic_modules"
# The module as `cargo build -p veto-envoy-module` leaves it (scripts/test.sh validates the
# in-proxy template with it too).
MODULE_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "debug"

# The metrics the sidecar and the authority export (DESIGN.md §6). Dashboards and alerts may use only these, so
# a typo in a query is an error here instead of an empty panel or an alert that never fires.
COUNTERS = {
    "veto_checks_total",
    "veto_revocation_events_total",
    "veto_jwks_refresh_total",
    "veto_stale_decisions_total",
    "veto_authority_key_load_errors_total",
    "veto_authority_refreshes_total",
    "veto_authority_home_unavailable_total",
    "veto_verify_jobs_total",
}
GAUGES = {
    "veto_feed_staleness_seconds",
    "veto_feed_connected",
    "veto_feed_ready",
    "veto_revocations_held",
    "veto_revocations_over_capacity",
    "veto_revocations_capacity",
    "veto_revocations_table_bytes",
    "veto_jwks_keys",
    "veto_authority_signing_keys",
    "veto_authority_next_key_activates_in_seconds",
    "veto_authority_current_key_age_seconds",
    "veto_authority_keys_last_load_ok",
}
HISTOGRAMS = {"veto_check_duration_seconds", "veto_revocation_propagation_seconds",
              "veto_authority_refresh_seconds"}
KNOWN_SERIES = COUNTERS | GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

# ---------------------------------------------------------------------------------------------
# Schemas for the custom resources in k8s/ (kubernetes-validate knows only core kinds). They
# cover the fields these manifests use and reject any other field, like --strict does.
# ---------------------------------------------------------------------------------------------
STR = {"type": "string"}
STR_LIST = {"type": "array", "items": STR}
STR_MAP = {"type": "object", "additionalProperties": STR}
DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": STR,
        "labels": STR_MAP,
        "annotations": STR_MAP,
    },
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": STR,
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": STR_LIST,
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def resource(spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": STR, "kind": STR, "metadata": METADATA, "spec": spec},
        "additionalProperties": False,
    }


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


RELABEL = obj({
    "action": STR, "regex": STR, "replacement": STR, "separator": STR,
    "sourceLabels": STR_LIST, "targetLabel": STR, "modulus": {"type": "integer"},
})
RULE = {
    **obj({
        "alert": STR, "record": STR, "expr": STR, "for": DURATION, "keep_firing_for": DURATION,
        "labels": STR_MAP, "annotations": STR_MAP,
    }, ["expr"]),
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): resource(obj({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": obj({"any": {"type": "boolean"}, "matchNames": STR_LIST}),
        "jobLabel": STR,
        "podTargetLabels": STR_LIST,
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
            **obj({
                "port": STR, "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
                "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array", "items": RELABEL},
                "metricRelabelings": {"type": "array", "items": RELABEL},
            }),
            "anyOf": [{"required": ["port"]}, {"required": ["portNumber"]}],
        }},
    }, ["selector", "podMetricsEndpoints"])),
    ("monitoring.coreos.com/v1", "PrometheusRule"): resource(obj({
        "groups": {"type": "array", "items": obj({
            "name": {"type": "string", "minLength": 1}, "interval": DURATION, "limit": {"type": "integer"},
            "labels": STR_MAP, "rules": {"type": "array", "items": RULE},
        }, ["name"])},
    }, ["groups"])),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): resource(obj({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": obj({"any": {"type": "boolean"}, "matchNames": STR_LIST}),
        "jobLabel": STR,
        "targetLabels": STR_LIST,
        "podTargetLabels": STR_LIST,
        "endpoints": {"type": "array", "minItems": 1, "items": {
            **obj({
                "port": STR, "targetPort": {"type": ["integer", "string"]},
                "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
                "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array", "items": RELABEL},
                "metricRelabelings": {"type": "array", "items": RELABEL},
            }),
            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
        }},
    }, ["selector", "endpoints"])),
    # cert-manager (k8s/inject): the fields its Issuer and Certificate use.
    ("cert-manager.io/v1", "Issuer"): resource({
        **obj({
            "selfSigned": obj({"crlDistributionPoints": STR_LIST}),
            "ca": obj({"secretName": {"type": "string", "minLength": 1},
                       "crlDistributionPoints": STR_LIST}, ["secretName"]),
        }),
        "minProperties": 1, "maxProperties": 1,
    }),
    ("cert-manager.io/v1", "Certificate"): resource(obj({
        "secretName": {"type": "string", "minLength": 1},
        "commonName": STR,
        "dnsNames": {"type": "array", "minItems": 1, "items": STR},
        "issuerRef": obj({"name": STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                          "group": {"const": "cert-manager.io"}}, ["name"]),
        "duration": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"},
        "renewBefore": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"},
        "isCA": {"type": "boolean"},
        "privateKey": obj({
            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
            "size": {"type": "integer", "enum": [256, 384, 521, 2048, 3072, 4096, 8192]},
            "rotationPolicy": {"enum": ["Never", "Always"]},
            "encoding": {"enum": ["PKCS1", "PKCS8"]},
        }),
        "usages": {"type": "array", "items": {"enum": [
            "signing", "digital signature", "content commitment", "key encipherment",
            "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
            "decipher only", "any", "server auth", "client auth", "code signing",
            "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
            "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
    }, ["secretName", "issuerRef"])),
    ("networking.istio.io/v1", "ServiceEntry"): resource(obj({
        "hosts": {"type": "array", "minItems": 1, "items": STR},
        "addresses": STR_LIST,
        "ports": {"type": "array", "items": obj({
            "number": {"type": "integer", "minimum": 1, "maximum": 65535},
            "protocol": {"enum": ["HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS"]},
            "name": STR,
            "targetPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        }, ["number", "name"])},
        "location": {"enum": ["MESH_EXTERNAL", "MESH_INTERNAL"]},
        "resolution": {"enum": ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]},
        "endpoints": {"type": "array", "items": obj({
            "address": STR, "ports": {"type": "object", "additionalProperties": {"type": "integer"}},
            "labels": STR_MAP, "network": STR, "locality": STR, "weight": {"type": "integer"},
            "serviceAccount": STR,
        })},
        "exportTo": STR_LIST,
        "workloadSelector": obj({"labels": STR_MAP}),
        "subjectAltNames": STR_LIST,
    }, ["hosts"])),
    ("security.istio.io/v1", "AuthorizationPolicy"): resource({
        **obj({
            "selector": obj({"matchLabels": STR_MAP}),
            "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
            "provider": obj({"name": STR}, ["name"]),
            "rules": {"type": "array", "items": obj({
                "from": {"type": "array", "items": obj({"source": obj({
                    k: STR_LIST for k in (
                        "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                        "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                        "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts")
                })})},
                "to": {"type": "array", "items": obj({"operation": obj({
                    k: STR_LIST for k in (
                        "hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
                })})},
                "when": {"type": "array", "items": obj({"key": STR, "values": STR_LIST, "notValues": STR_LIST}, ["key"])},
            })},
        }),
        # CUSTOM needs a provider, and only CUSTOM may have one.
        "if": {"properties": {"action": {"const": "CUSTOM"}}, "required": ["action"]},
        "then": {"required": ["provider"]},
        "else": {"not": {"required": ["provider"]}},
    }),
}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def exit(self, ok_message: str) -> None:
        if self.items:
            for item in self.items:
                print(f"FAIL {item}", file=sys.stderr)
            sys.exit(1)
        print(ok_message)


def tool(env: str, fallback: str) -> str:
    return os.environ.get(env) or fallback


def promtool_check_exprs(exprs: dict[str, str], failures: Failures, where: str) -> None:
    """Parse PromQL with promtool, offline: each expr becomes a recording rule."""
    rules = [{"record": "check:" + re.sub(r"[^a-zA-Z0-9_]", "_", name), "expr": expr}
             for name, expr in exprs.items()]
    promtool_check_groups([{"name": "exprs", "rules": rules}], failures, where)


def promtool_check_groups(groups: list, failures: Failures, where: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": groups}, f)
    try:
        r = subprocess.run([tool("PROMTOOL", "promtool"), "check", "rules", f.name],
                           capture_output=True, text=True)
        if r.returncode != 0:
            failures.add(where, "promtool check rules failed:\n" + r.stdout + r.stderr)
    finally:
        os.unlink(f.name)


def check_metric_names(expr: str, failures: Failures, where: str) -> None:
    for name in set(re.findall(r"\bveto_[a-z0-9_]+", expr)):
        if name not in KNOWN_SERIES:
            failures.add(where, f"unknown metric {name!r} (known: scripts/deploy_checks.py KNOWN_SERIES)")


# ---------------------------------------------------------------------------------------------
def cmd_dashboard(files: list[str]) -> None:
    failures = Failures()
    grafana_vars = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
    for file in files:
        dash = json.loads(Path(file).read_text())
        for key in ("title", "uid", "panels", "schemaVersion", "templating"):
            if key not in dash:
                failures.add(file, f"missing top-level {key!r}")
        variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        if variables.get("datasource", {}).get("type") != "datasource":
            failures.add(file, "needs a `datasource` variable of type datasource")
        ids: set[int] = set()
        exprs: dict[str, str] = {}
        for panel in dash.get("panels", []):
            pid, title = panel.get("id"), panel.get("title", "?")
            where = f"{file} panel {pid} {title!r}"
            if pid in ids:
                failures.add(where, "duplicate panel id")
            ids.add(pid)
            gp = panel.get("gridPos", {})
            if gp.get("x", 0) + gp.get("w", 0) > 24:
                failures.add(where, "gridPos wider than 24 columns")
            if panel.get("type") == "row":
                continue
            targets = panel.get("targets") or []
            if not targets:
                failures.add(where, "no targets")
            if panel.get("datasource", {}).get("uid") != "${datasource}":
                failures.add(where, "datasource is not ${datasource}")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs):
                failures.add(where, "duplicate refId")
            for t in targets:
                expr = t.get("expr", "")
                check_metric_names(expr, failures, where)
                subst = {**{name: ".*" for name in variables}, **grafana_vars}
                try:
                    concrete = string.Template(expr).substitute(subst)
                except (KeyError, ValueError) as e:
                    failures.add(where, f"unknown variable in {expr!r}: {e}")
                    continue
                exprs[f"panel{pid}_{t.get('refId')}"] = concrete
        if exprs:
            promtool_check_exprs(exprs, failures, file)
    failures.exit(f"dashboards OK: {', '.join(files)}")


# ---------------------------------------------------------------------------------------------
def load_docs(files: list[str]) -> list[tuple[str, dict]]:
    docs = []
    for file in files:
        for doc in yaml.safe_load_all(Path(file).read_text()):
            if doc:
                docs.append((file, doc))
    return docs


def envoy_validate(config_text: str, failures: Failures, where: str, env: dict | None = None) -> None:
    envoy = os.environ.get("VETO_ENVOY_BIN")
    if not envoy:
        failures.add(where, "VETO_ENVOY_BIN is not set (source scripts/env.sh)")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
    try:
        r = subprocess.run([envoy, "--mode", "validate", "-c", f.name, "-l", "error"],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            failures.add(where, "envoy --mode validate failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])
    finally:
        os.unlink(f.name)


def http_filters(envoy_config: dict, listener: str) -> dict[str, dict]:
    for lis in envoy_config["static_resources"]["listeners"]:
        if lis["name"] == listener:
            hcm = lis["filter_chains"][0]["filters"][0]["typed_config"]
            return {f["name"]: f.get("typed_config", {}) for f in hcm["http_filters"]}
    raise KeyError(listener)


def cluster_port(envoy_config: dict, name: str) -> int:
    for c in envoy_config["static_resources"]["clusters"]:
        if c["name"] == name:
            return c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
    raise KeyError(name)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def alerts_groups() -> list:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def cmd_k8s(files: list[str]) -> None:
    """Each FILE is one rendered kustomization root (`kubectl kustomize DIR`, with the Secrets
    scripts/k8s-secrets.sh generates for it appended when it has any): references resolve
    within that file, as they would in the cluster it is applied to."""
    failures = Failures()
    template = yaml.safe_load(string.Template(SIDECAR_TEMPLATE.read_text()).substitute(
        LISTEN_PORT=1, ADMIN_PORT=2, AUTHZ_PORT=3, UPSTREAM_PORT=4))
    providers: dict[str, dict] = {}
    service_entries: dict[tuple[str, int], str] = {}
    custom_policies: list[tuple[str, str]] = []
    veto_ports: dict[str, tuple[int, int]] = {}
    checked = total = 0
    for file in files:
        docs = [d for _, d in load_docs([file])]
        total += len(docs)
        checked += check_render(file, docs, template, failures, providers, service_entries,
                                custom_policies, veto_ports)
    for where, provider in custom_policies:
        grpc = providers.get(provider)
        if grpc is None:
            failures.add(where, f"provider {provider!r} is not in any mesh extensionProviders")
        elif (grpc["service"], int(grpc["port"])) not in service_entries:
            failures.add(where, f"provider {provider!r} points at {grpc['service']}:{grpc['port']}, no ServiceEntry has it")
    for where, (grpc_port, http_port) in veto_ports.items():
        for name, prov in providers.items():
            want = grpc_port if prov["flavour"] == "envoyExtAuthzGrpc" else http_port
            if int(prov["port"]) != want:
                what = "[grpc]" if prov["flavour"] == "envoyExtAuthzGrpc" else "[http]"
                failures.add(where, f"mesh provider {name} port {prov['port']} is not veto's {what} port {want}")
    failures.exit(f"k8s cross-checks OK ({len(files)} renders, {total} resources, "
                  f"{checked} custom resources schema-checked)")


# MeshConfig.extensionProviders entries of the ext_authz kinds, with the fields Istio has
# (istio.mesh.v1alpha1): the gRPC provider has no header lists.
_EXT_AUTHZ_COMMON = {
    "service": STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "timeout": DURATION | {"pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"},
    "failOpen": {"type": "boolean"}, "clearRouteCache": {"type": "boolean"},
    "statusOnError": {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
    "includeRequestBodyInCheck": obj({"maxRequestBytes": {"type": "integer"},
                                      "allowPartialMessage": {"type": "boolean"},
                                      "packAsBytes": {"type": "boolean"}}),
}
MESH_PROVIDER = obj({
    "name": STR,
    "envoyExtAuthzGrpc": obj(_EXT_AUTHZ_COMMON, ["service", "port"]),
    "envoyExtAuthzHttp": obj({
        **_EXT_AUTHZ_COMMON, "pathPrefix": {"type": "string", "pattern": "^/"},
        "includeRequestHeadersInCheck": STR_LIST, "includeAdditionalHeadersInCheck": STR_MAP,
        "headersToUpstreamOnAllow": STR_LIST, "headersToDownstreamOnDeny": STR_LIST,
        "headersToDownstreamOnAllow": STR_LIST,
    }, ["service", "port"]),
}, ["name"])

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Secrets a pod may name without the render holding them: none; the overlays' Secrets come
# from scripts/k8s-secrets.sh, whose output validate-k8s.sh appends to each render (their
# names: docs/kubernetes.md). cert-manager Certificates' spec.secretName count as present.
GENERATED_SECRETS = {"veto-nats-servers", "veto-nats-sidecar", "veto-nats-authority",
                     "veto-nats-revoker", "veto-nats-operator", "veto-authority-keys",
                     "veto-authority"}
VETO_CONFIG_KEYS = ("veto.toml", "authority.toml")


def ns_of(doc: dict) -> str:
    return doc.get("metadata", {}).get("namespace", "")


def effective_veto_config(text: str, env: list[dict]) -> dict:
    """veto's config as the process sees it: the TOML plus VETO__SECTION__KEY overrides."""
    cfg = tomllib.loads(text)
    for e in env:
        name = e.get("name", "")
        if name.startswith("VETO__") and "value" in e:
            parts = name[len("VETO__"):].lower().split("__")
            node = cfg
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = e["value"]
    return cfg


def veto_check_config(text: str, env: list[dict], failures: Failures, where: str) -> None:
    """`veto check-config` on the effective config, when a veto binary is at hand."""
    veto = os.environ.get("VETO_BIN") or str(REPO / "target/debug/veto")
    if not os.access(veto, os.X_OK):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        extra = {e["name"]: e["value"] for e in env if e.get("name", "").startswith("VETO__") and "value" in e}
        clean = {k: v for k, v in os.environ.items() if not k.startswith("VETO__")}
        r = subprocess.run([veto, "check-config", "--config", f.name], capture_output=True,
                           text=True, env={**clean, **extra})
        if r.returncode != 0:
            failures.add(where, "veto check-config failed:\n" + r.stdout + r.stderr)
    finally:
        os.unlink(f.name)


def service_for(url: str, pod_ns: str, services: dict) -> tuple[str, str, int] | None:
    """nats://[user:pass@]host:port → (namespace, name, port) of the in-cluster Service it
    names (`name`, `name.ns`, `name.ns.svc[.cluster.local]`), or None for another host."""
    m = re.match(r"^[a-z]+://(?:[^@/]*@)?([^:/]+):(\d+)$", url)
    if not m:
        return None
    host, port = m.group(1), int(m.group(2))
    parts = host.split(".")
    if len(parts) == 1:
        return (pod_ns, parts[0], port)
    if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return (parts[1], parts[0], port)
    return None


def check_render(file: str, docs: list[dict], template: dict, failures: Failures,
                 providers: dict, service_entries: dict, custom_policies: list,
                 veto_ports: dict) -> int:
    checked = 0
    configmaps = {(ns_of(d), d["metadata"]["name"]): d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    secrets: dict[tuple[str, str], set | None] = {
        (ns_of(d), d["metadata"]["name"]): set((d.get("data") or {}) | (d.get("stringData") or {}))
        for d in docs if d.get("kind") == "Secret"}
    for d in docs:
        if d.get("kind") == "Certificate" and d.get("spec", {}).get("secretName"):
            secrets[(ns_of(d), d["spec"]["secretName"])] = None  # keys: cert-manager's
    services = {(ns_of(d), d["metadata"]["name"]): d for d in docs if d.get("kind") == "Service"}
    envoy_configs: dict[tuple[str, str], dict] = {}
    pods: list[tuple[str, dict, dict]] = []  # (where, workload doc, pod template)

    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = doc.get("metadata", {}).get("name", "?")
        where = f"{file} {kind}/{name}"
        schema = CRD_SCHEMAS.get((api, kind))
        if schema is not None:
            checked += 1
            for err in sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str):
                path = ".".join(str(p) for p in err.absolute_path)
                failures.add(where, f"{path}: {err.message}")
        if '"REGION"' in json.dumps(doc):
            failures.add(where, "holds the placeholder REGION: the overlay did not patch it")
        if kind == "ConfigMap":
            data = doc.get("data", {})
            for key in VETO_CONFIG_KEYS:
                if key in data:
                    try:
                        cfg = tomllib.loads(data[key])
                        wanted = ("grpc", "http", "issuers", "nats", "revocation") if key == "veto.toml" else ("http", "nats", "authority")
                        for section in wanted:
                            if section not in cfg:
                                failures.add(where, f"{key} has no [{section}]")
                    except tomllib.TOMLDecodeError as e:
                        failures.add(where, f"{key} is not TOML: {e}")
            if "envoy.yaml" in data:
                cfg = yaml.safe_load(data["envoy.yaml"])
                envoy_configs[(ns_of(doc), name)] = cfg
                if DYNAMIC_MODULES in http_filters(cfg, "ingress"):
                    # validated in check_pod, with the files the Envoy container mounts
                    check_inproxy_filter(cfg, failures, where)
                    continue
                envoy_validate(data["envoy.yaml"], failures, where)
                # The security-relevant filters must not drift from the tested template.
                want, got = http_filters(template, "ingress"), http_filters(cfg, "ingress")
                for filt in ("envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz"):
                    if want.get(filt) != got.get(filt):
                        failures.add(where, f"{filt} differs from {SIDECAR_TEMPLATE.relative_to(REPO)}")
            if "mesh" in data:
                mesh = yaml.safe_load(data["mesh"]) or {}
                for p in mesh.get("extensionProviders", []):
                    for err in sorted(jsonschema.Draft202012Validator(MESH_PROVIDER).iter_errors(p), key=str):
                        path = ".".join(str(x) for x in err.absolute_path)
                        failures.add(where, f"mesh extensionProviders {p.get('name')}: {path}: {err.message}")
                    for flavour in ("envoyExtAuthzGrpc", "envoyExtAuthzHttp"):
                        prov = p.get(flavour)
                        if prov is None:
                            continue
                        providers[p["name"]] = {**prov, "flavour": flavour}
                        if prov.get("failOpen", False):
                            failures.add(where, f"provider {p['name']} fails open; DESIGN.md §2 wants fail closed")
                        if "timeout" not in prov:
                            failures.add(where, f"provider {p['name']} has no timeout")
        elif kind == "ServiceEntry":
            for host in doc["spec"].get("hosts", []):
                for port in doc["spec"].get("ports", []):
                    service_entries[(host, port["number"])] = port.get("protocol", "")
        elif kind == "AuthorizationPolicy" and doc["spec"].get("action") == "CUSTOM":
            custom_policies.append((where, doc["spec"].get("provider", {}).get("name", "")))
        elif kind == "PrometheusRule":
            groups = doc["spec"]["groups"]
            if groups != alerts_groups():
                failures.add(where, f"spec.groups differ from {ALERTS.relative_to(REPO)}; "
                                    "run scripts/validate-k8s.sh --write-prometheusrule")
            for rule in (r for g in groups for r in g.get("rules", [])):
                check_metric_names(rule["expr"], failures, where)
            promtool_check_groups(groups, failures, where)
        elif kind in POD_KINDS:
            tmpl = doc["spec"]["template"] if kind != "Job" else doc["spec"]["template"]
            pods.append((where, doc, tmpl))

    for where, doc, tmpl in pods:
        check_pod(where, doc, tmpl, configmaps, secrets, services, envoy_configs, failures, veto_ports)
    for doc in docs:
        if doc.get("kind") == "NetworkPolicy":
            check_network_policy(f"{file} NetworkPolicy/{doc['metadata']['name']}", doc, pods, failures)
    return checked


SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}


def check_pod(where: str, doc: dict, tmpl: dict, configmaps: dict, secrets: dict, services: dict,
              envoy_configs: dict, failures: Failures, veto_ports: dict) -> None:
    ns = ns_of(doc)
    pod = tmpl["spec"]
    pod_sc = pod.get("securityContext", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def need_configmap(cm: str, keys: list[str], what: str) -> None:
        if (ns, cm) not in configmaps:
            failures.add(where, f"{what}: ConfigMap {cm} is not in the render")
            return
        for k in keys:
            if k not in configmaps[(ns, cm)]:
                failures.add(where, f"{what}: ConfigMap {cm} has no key {k}")

    def need_secret(s: str, keys: list[str], what: str) -> None:
        if (ns, s) not in secrets:
            # Without scripts/k8s-secrets.sh's output appended, its Secrets may be absent.
            if s not in GENERATED_SECRETS or any(n in GENERATED_SECRETS for _, n in secrets):
                failures.add(where, f"{what}: Secret {s} is neither in the render nor one scripts/k8s-secrets.sh makes")
            return
        have = secrets[(ns, s)]
        for k in keys if have is not None else []:
            if k not in have:
                failures.add(where, f"{what}: Secret {s} has no key {k}")

    for vname, v in volumes.items():
        if "configMap" in v:
            need_configmap(v["configMap"]["name"], [i["key"] for i in v["configMap"].get("items", [])], f"volume {vname}")
        if "secret" in v:
            need_secret(v["secret"]["secretName"], [i["key"] for i in v["secret"].get("items", [])], f"volume {vname}")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        cw = f"container {c['name']}"
        sc = c.get("securityContext", {})
        for key, want in SECURITY.items():
            if sc.get(key) is not want:
                failures.add(where, f"{cw}: securityContext.{key} is not {want}")
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            failures.add(where, f"{cw}: runAsNonRoot is not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            failures.add(where, f"{cw}: capabilities.drop lacks ALL")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp != "RuntimeDefault":
            failures.add(where, f"{cw}: seccompProfile is {seccomp}, not RuntimeDefault")
        env = c.get("env", [])
        for e in env:
            ref = e.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                need_configmap(ref["configMapKeyRef"]["name"], [ref["configMapKeyRef"]["key"]], f"{cw} env {e['name']}")
            if "secretKeyRef" in ref:
                need_secret(ref["secretKeyRef"]["name"], [ref["secretKeyRef"]["key"]], f"{cw} env {e['name']}")
            # A NATS URL (the JetStream server's leaf remote) names a Service of the render.
            if str(e.get("value", "")).startswith("nats://"):
                check_service_url(e["value"], ns, services, failures, f"{where} {cw} env {e['name']}")
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef:
                need_configmap(ef["configMapRef"]["name"], [], f"{cw} envFrom")
            if "secretRef" in ef:
                need_secret(ef["secretRef"]["name"], [], f"{cw} envFrom")
        mounted = [volumes.get(m["name"], {}) for m in c.get("volumeMounts", [])]
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes and m["name"] not in {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}:
                failures.add(where, f"{cw} mounts volume {m['name']}, which the pod does not have")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        # Envoy mounts the sidecar's veto.toml in the in-proxy pod (the module reads it): it
        # is checked there as the reader, in check_inproxy_pod, not as a veto process.
        for key in VETO_CONFIG_KEYS if c["name"] != "envoy" else ():
            cm = next((v["configMap"]["name"] for v in mounted if "configMap" in v
                       and key in configmaps.get((ns, v["configMap"]["name"]), {})), None)
            if cm is None:
                continue
            text = configmaps[(ns, cm)][key]
            try:
                cfg = effective_veto_config(text, env)
            except tomllib.TOMLDecodeError:
                continue
            # paths on the pod's emptyDirs (inproxy.shm_path) exist in the pod: here, a temp dir
            with tempfile.TemporaryDirectory() as tmp:
                empty = {m["name"] for m in c.get("volumeMounts", []) if "emptyDir" in volumes.get(m["name"], {})}
                dirs = materialize({"volumeMounts": [m for m in c.get("volumeMounts", []) if m["name"] in empty]},
                                   volumes, {}, Path(tmp))
                local_env = [{**e, "value": rewrite(e["value"], dirs)} if "value" in e else e for e in env]
                veto_check_config(text, local_env, failures, f"{where} {cw} ({key})")
            check_veto_container(where, cw, key, cfg, c, ports, pod, ns, services, failures)
            if key == "veto.toml":
                veto_ports[f"{where} {cw}"] = (port_of(cfg.get("grpc", {}).get("listen", "127.0.0.1:9191")),
                                               port_of(cfg.get("http", {}).get("listen", "127.0.0.1:9192")))
                envoy_cm = next((cm2 for cc in pod["containers"] if cc["name"] == "envoy"
                                 for cm2 in ((ns, volumes.get(m["name"], {}).get("configMap", {}).get("name"))
                                             for m in cc.get("volumeMounts", []))
                                 if cm2 in envoy_configs), None)
                inproxy = envoy_cm and DYNAMIC_MODULES in http_filters(envoy_configs[envoy_cm], "ingress")
                if envoy_cm and not inproxy and cluster_port(envoy_configs[envoy_cm], "veto_authz") != port_of(cfg["grpc"]["listen"]):
                    failures.add(where, "Envoy's veto_authz cluster port is not veto's [grpc] port")
                if inproxy:
                    check_inproxy_pod(where, pod, c, cm, configmaps[envoy_cm], volumes,
                                      {k: v for (n, k), v in configmaps.items() if n == ns}, failures)
        # nats-server: every $VETO_NATS_* its config reads is in the environment, and the
        # JetStream store is on the volume claim.
        for v in mounted:
            cm = v.get("configMap", {}).get("name")
            projected = {i["key"] for i in v.get("configMap", {}).get("items", [])}
            for k, text in configmaps.get((ns, cm), {}).items() if cm else []:
                if not k.endswith(".conf") or (projected and k not in projected):
                    continue
                names = {e["name"] for e in env}
                for var in sorted(set(re.findall(r":\s*\$([A-Z0-9_]+)", text))):
                    if var not in names:
                        failures.add(where, f"{cw}: {k} reads ${var}, which the container's env lacks")
                store = re.search(r'store_dir:\s*"([^"]+)"', text)
                if store:
                    claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
                    if not any(m["name"] in claims and (store.group(1) + "/").startswith(m["mountPath"].rstrip("/") + "/")
                               for m in c.get("volumeMounts", [])):
                        failures.add(where, f"{cw}: {k} store_dir {store.group(1)} is not on a volume claim")


def check_inproxy_filter(cfg: dict, failures: Failures, where: str) -> None:
    """An in-proxy Envoy config's module filter is the template's but for the paths in
    filter_config (which must name the sidecar's veto.toml)."""
    template = yaml.safe_load(string.Template(INPROXY_TEMPLATE.read_text()).safe_substitute(
        LISTEN_PORT=1, ADMIN_PORT=2, UPSTREAM_PORT=3, VETO_CONFIG="/v"))
    want = http_filters(template, "ingress")
    got = http_filters(cfg, "ingress")
    if list(got) != list(want):
        failures.add(where, f"http filters {list(got)}, the template's are {list(want)}")
    w, g = want[DYNAMIC_MODULES], got[DYNAMIC_MODULES]
    for key in ("@type", "dynamic_module_config", "filter_name"):
        if w.get(key) != g.get(key):
            failures.add(where, f"{DYNAMIC_MODULES} {key} differs from {INPROXY_TEMPLATE.relative_to(REPO)}")
    try:
        module_cfg = json.loads(g["filter_config"]["value"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        failures.add(where, f"{DYNAMIC_MODULES} filter_config is not the module's JSON: {e}")
        return
    if "veto_config" not in module_cfg:
        failures.add(where, f"{DYNAMIC_MODULES} filter_config names no veto_config")


def materialize(c: dict, volumes: dict, configmaps: dict, root: Path) -> dict[str, str]:
    """Lays out what container `c` mounts under `root` (a ConfigMap's keys as files, an
    emptyDir as a directory) and returns {mountPath: local path}."""
    mounts: dict[str, str] = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        local = root / m["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in v:
            for key, text in configmaps.get(v["configMap"]["name"], {}).items():
                (local / key).write_text(text)
        mounts[m["mountPath"].rstrip("/")] = str(local)
    return mounts


def rewrite(text: str, mounts: dict[str, str]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        text = re.sub(re.escape(mount_path) + r"(?=[/\"'\s]|$)", mounts[mount_path], text)
    return text


def check_inproxy_pod(where: str, pod: dict, veto: dict, veto_cm: str, envoy_data: dict,
                      volumes: dict, configmaps: dict, failures: Failures) -> None:
    """The in-proxy pod (k8s/inproxy): the module delivered into the directory Envoy searches,
    the shared-memory file on a memory-backed emptyDir both containers mount, the sidecar's
    own veto.toml and overrides in Envoy's environment; then Envoy validates the config with
    the module cargo built, against the files the container mounts."""
    envoy = next(cc for cc in pod["containers"] if cc["name"] == "envoy")
    env = {e["name"]: e.get("value") for e in envoy.get("env", [])}
    veto_env = {e["name"]: e.get("value") for e in veto.get("env", [])}
    mounts_of = lambda c: {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
    search = env.get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH")
    if not search:
        failures.add(where, "container envoy: ENVOY_DYNAMIC_MODULES_SEARCH_PATH is not set")
    else:
        installers = [ic for ic in pod.get("initContainers", [])
                      if "install-module" in ic.get("args", [])
                      and search in ic.get("args", [])
                      and search.rstrip("/") in mounts_of(ic)
                      and not mounts_of(ic)[search.rstrip("/")].get("readOnly")]
        if search.rstrip("/") not in mounts_of(envoy):
            failures.add(where, f"container envoy: ENVOY_DYNAMIC_MODULES_SEARCH_PATH {search} is not a mount")
        elif not installers:
            failures.add(where, f"no init container runs `install-module --to {search}` into the volume Envoy mounts there")
        elif mounts_of(installers[0])[search.rstrip("/")]["name"] != mounts_of(envoy)[search.rstrip("/")]["name"]:
            failures.add(where, f"the init container's {search} is not the volume Envoy mounts there")
    for k, v in veto_env.items():
        if k.startswith("VETO__") and env.get(k) != v:
            failures.add(where, f"container envoy: {k} is {env.get(k)!r}, the veto container's is {v!r} (the module must see the sidecar's config)")
    shm = veto_env.get("VETO__INPROXY__SHM_PATH") or tomllib.loads(configmaps[veto_cm]["veto.toml"]).get("inproxy", {}).get("shm_path")
    if not shm:
        failures.add(where, "container veto: inproxy.shm_path is not set (VETO__INPROXY__SHM_PATH)")
    else:
        shm_dir = str(Path(shm).parent)
        vm, em = mounts_of(veto).get(shm_dir), mounts_of(envoy).get(shm_dir)
        vol = volumes.get((vm or {}).get("name"), {})
        if vm is None or em is None or vm["name"] != em["name"]:
            failures.add(where, f"{shm_dir} is not one volume mounted by both veto and envoy")
        elif vol.get("emptyDir", {}).get("medium") != "Memory" or "sizeLimit" not in vol.get("emptyDir", {}):
            failures.add(where, f"volume {vm['name']} ({shm_dir}) is not an emptyDir with medium Memory and a sizeLimit")
        elif vm.get("readOnly") or not em.get("readOnly"):
            failures.add(where, f"{shm_dir}: veto must mount it read-write and envoy read-only")
    try:
        veto_config = json.loads(http_filters(yaml.safe_load(envoy_data["envoy.yaml"]), "ingress")
                                 [DYNAMIC_MODULES]["filter_config"]["value"])["veto_config"]
    except (KeyError, TypeError, json.JSONDecodeError):
        return  # check_inproxy_filter said why
    cm_mount = mounts_of(envoy).get(str(Path(veto_config).parent))
    if cm_mount is None or volumes.get(cm_mount["name"], {}).get("configMap", {}).get("name") != veto_cm:
        failures.add(where, f"container envoy: veto_config {veto_config} is not the veto container's ConfigMap {veto_cm}")
    if not (MODULE_DIR / "libvetoinproxy.so").is_file():
        print(f"{where}: envoy --mode validate of the in-proxy config skipped "
              f"(no {MODULE_DIR}/libvetoinproxy.so; cargo build -p veto-envoy-module)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        mounts = materialize(envoy, volumes, configmaps, Path(tmp))
        if search:
            mounts[search.rstrip("/")] = str(MODULE_DIR)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("VETO__")}
        run_env = {**clean, **{k: rewrite(v, mounts) for k, v in env.items() if v is not None}}
        envoy_validate(rewrite(envoy_data["envoy.yaml"], mounts), failures,
                       f"{where} container envoy (in-proxy, module {MODULE_DIR})", run_env)


def check_service_url(url: str, ns: str, services: dict, failures: Failures, where: str) -> dict | None:
    target = service_for(url, ns, services)
    if target is None:
        failures.add(where, f"{url.split('@')[-1]} is not a Service of this cluster")
        return None
    svc = services.get(target[:2])
    if svc is None:
        failures.add(where, f"{url.split('@')[-1]}: no Service {target[1]} in namespace {target[0] or '(default)'} in the render")
        return None
    if target[2] not in {p["port"] for p in svc["spec"].get("ports", [])}:
        failures.add(where, f"{url.split('@')[-1]}: Service {target[1]} has no port {target[2]}")
    return svc


def check_veto_container(where: str, cw: str, key: str, cfg: dict, c: dict, ports: dict, pod: dict,
                         ns: str, services: dict, failures: Failures) -> None:
    http = cfg.get("http", {}).get("listen", "127.0.0.1:9192")
    if http.startswith("127."):
        failures.add(where, f"{cw}: [http] listens on loopback: kubelet probes and Prometheus cannot reach it")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = c.get(probe, {}).get("httpGet", {}).get("port")
        if port is None:
            failures.add(where, f"{cw}: no {probe}")
        elif ports.get(port, port) != port_of(http):
            failures.add(where, f"{cw}: {probe} port {port} is not [http] port {port_of(http)}")
    paths = {c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe")}
    if paths != {"/healthz", "/readyz"}:
        failures.add(where, f"{cw}: liveness/readiness probe paths {sorted(map(str, paths))}, want /healthz and /readyz")
    if key == "authority.toml":
        api = port_of(cfg.get("authority", {}).get("listen", "0.0.0.0:9280"))
        if api not in ports.values():
            failures.add(where, f"{cw}: [authority] listen port {api} is not a containerPort")
    grace = cfg.get("shutdown", {}).get("grace", "10s")
    seconds = int(re.fullmatch(r"(\d+)s", grace).group(1)) if re.fullmatch(r"(\d+)s", grace) else 10
    if pod.get("terminationGracePeriodSeconds", 30) <= seconds:
        failures.add(where, f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} "
                            f"does not exceed {cw}'s shutdown.grace {grace}")
    nats = cfg.get("nats")
    if nats is None:
        return
    for url in str(nats.get("url", "")).split(","):
        if not url:
            failures.add(where, f"{cw}: nats.url is empty (the overlay sets VETO__NATS__URL)")
            continue
        svc = check_service_url(url.strip(), ns, services, failures, f"{where} {cw} nats.url")
        if svc is None:
            continue
        svc_region = svc["metadata"].get("labels", {}).get("veto/region")
        if svc_region != nats.get("region"):
            failures.add(where, f"{cw}: nats.url {url} is region {svc_region}'s Service, nats.region is {nats.get('region')}")
        if svc["metadata"]["name"] != "nats-js":
            failures.add(where, f"{cw}: nats.url names {svc['metadata']['name']}, not the region's JetStream server nats-js")


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_network_policy(where: str, doc: dict, pods: list, failures: Failures) -> None:
    ns = ns_of(doc)
    sel = doc["spec"].get("podSelector", {})
    selected = [tmpl for _, w, tmpl in pods if ns_of(w) == ns and selects(sel, tmpl["metadata"].get("labels", {}))]
    if not selected:
        if sel.get("matchLabels"):
            failures.add(where, "podSelector matches no pod of the render")
        return
    for rule in doc["spec"].get("ingress", []):
        for p in rule.get("ports", []):
            port = p.get("port")
            ok = any(port in (cp.get("containerPort"), cp.get("name"))
                     for t in selected for c in t["spec"]["containers"] for cp in c.get("ports", []))
            if not ok:
                failures.add(where, f"ingress port {port} is no containerPort of the pods it selects")


def cmd_crd_kinds() -> None:
    for api, kind in CRD_SCHEMAS:
        print(kind, api)


def cmd_write_prometheusrule() -> None:
    header = (
        "# GENERATED from deploy/prometheus/alerts.yaml by\n"
        "#   scripts/validate-k8s.sh --write-prometheusrule\n"
        "# Edit alerts.yaml (and its tests), then regenerate; validate-k8s.sh fails on drift.\n"
        "# Your Prometheus must select this rule (spec.ruleSelector, e.g. a `release` label with\n"
        "# kube-prometheus-stack).\n"
    )
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "veto-sidecar", "labels": {"app.kubernetes.io/name": "veto"}},
        "spec": {"groups": alerts_groups()},
    }

    class Literal(yaml.SafeDumper):
        pass

    def str_repr(dumper: yaml.SafeDumper, s: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)

    Literal.add_representer(str, str_repr)
    PROMETHEUS_RULE.write_text(header + yaml.dump(rule, Dumper=Literal, sort_keys=False, width=10000))
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "dashboard" and args:
        cmd_dashboard(args)
    elif cmd == "k8s" and args:
        cmd_k8s(args)
    elif cmd == "crd-kinds":
        cmd_crd_kinds()
    elif cmd == "write-prometheusrule":
        cmd_write_prometheusrule()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

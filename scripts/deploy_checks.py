#!/usr/bin/env python3
"""Offline checks for what ships in deploy/ and k8s/, beyond what promtool, envoy and
kubernetes-validate check on their own. Run with the venv's python (it needs PyYAML and
jsonschema, both installed with kubernetes-validate); scripts/test.sh and
scripts/validate-k8s.sh call it.

  deploy_checks.py dashboard FILE...        Grafana JSON: structure, known metric names, PromQL
                                            parses (every expr becomes a recording rule for
                                            `promtool check rules`)
  deploy_checks.py k8s FILE...              custom-resource kinds against the schemas below;
                                            envoy.yaml in ConfigMaps through `envoy --mode
                                            validate`; PrometheusRule == alerts.yaml; ports and
                                            names that must agree between the manifests
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
PROMETHEUS_RULE = REPO / "k8s/prometheusrule.yaml"
SIDECAR_TEMPLATE = REPO / "deploy/envoy/envoy-sidecar.yaml.tmpl"

# The metrics the sidecar and the authority export (DESIGN.md §6). Dashboards and alerts may use only these, so
# a typo in a query is an error here instead of an empty panel or an alert that never fires.
COUNTERS = {
    "veto_checks_total",
    "veto_revocation_events_total",
    "veto_jwks_refresh_total",
    "veto_stale_decisions_total",
    "veto_authority_key_load_errors_total",
}
GAUGES = {
    "veto_feed_staleness_seconds",
    "veto_feed_connected",
    "veto_feed_ready",
    "veto_revocations_held",
    "veto_revocations_over_capacity",
    "veto_jwks_keys",
    "veto_authority_signing_keys",
    "veto_authority_next_key_activates_in_seconds",
    "veto_authority_current_key_age_seconds",
    "veto_authority_keys_last_load_ok",
}
HISTOGRAMS = {"veto_check_duration_seconds", "veto_revocation_propagation_seconds"}
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


def envoy_validate(config_text: str, failures: Failures, where: str) -> None:
    envoy = os.environ.get("VETO_ENVOY_BIN")
    if not envoy:
        failures.add(where, "VETO_ENVOY_BIN is not set (source scripts/env.sh)")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
    try:
        r = subprocess.run([envoy, "--mode", "validate", "-c", f.name, "-l", "error"],
                           capture_output=True, text=True)
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
    failures = Failures()
    docs = load_docs(files)
    template = yaml.safe_load(string.Template(SIDECAR_TEMPLATE.read_text()).substitute(
        LISTEN_PORT=1, ADMIN_PORT=2, AUTHZ_PORT=3, UPSTREAM_PORT=4))
    veto_configs: dict[str, dict] = {}
    envoy_configs: dict[str, dict] = {}
    providers: dict[str, dict] = {}
    service_entries: dict[tuple[str, int], str] = {}
    custom_policies: list[tuple[str, str]] = []
    checked = 0

    for file, doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = doc.get("metadata", {}).get("name", "?")
        where = f"{file} {kind}/{name}"
        schema = CRD_SCHEMAS.get((api, kind))
        if schema is not None:
            checked += 1
            for err in sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str):
                path = ".".join(str(p) for p in err.absolute_path)
                failures.add(where, f"{path}: {err.message}")
        if kind == "ConfigMap":
            data = doc.get("data", {})
            if "veto.toml" in data:
                try:
                    cfg = tomllib.loads(data["veto.toml"])
                    veto_configs[name] = cfg
                    for key in ("grpc", "http", "issuers", "nats", "revocation"):
                        if key not in cfg:
                            failures.add(where, f"veto.toml has no [{key}]")
                except tomllib.TOMLDecodeError as e:
                    failures.add(where, f"veto.toml is not TOML: {e}")
            if "envoy.yaml" in data:
                envoy_validate(data["envoy.yaml"], failures, where)
                cfg = yaml.safe_load(data["envoy.yaml"])
                envoy_configs[name] = cfg
                # The security-relevant filters must not drift from the tested template.
                want, got = http_filters(template, "ingress"), http_filters(cfg, "ingress")
                for filt in ("envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz"):
                    if want.get(filt) != got.get(filt):
                        failures.add(where, f"{filt} differs from {SIDECAR_TEMPLATE.relative_to(REPO)}")
            if "mesh" in data:
                mesh = yaml.safe_load(data["mesh"]) or {}
                for p in mesh.get("extensionProviders", []):
                    grpc = p.get("envoyExtAuthzGrpc")
                    if grpc is None:
                        continue
                    providers[p["name"]] = grpc
                    if grpc.get("failOpen", False):
                        failures.add(where, f"provider {p['name']} fails open; DESIGN.md §2 wants fail closed")
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
        elif kind == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            mounts = {v["name"]: v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                cms = [mounts.get(m["name"]) for m in c.get("volumeMounts", [])]
                for cm in cms:
                    if cm and cm not in {d.get("metadata", {}).get("name") for _, d in docs if d.get("kind") == "ConfigMap"}:
                        failures.add(where, f"container {c['name']} mounts ConfigMap {cm} that is not in k8s/")
                if c["name"] == "veto":
                    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                    cfg = next((veto_configs.get(cm) for cm in cms if cm in veto_configs), None)
                    if cfg is None:
                        continue
                    http_port = port_of(cfg["http"]["listen"])
                    if cfg["http"]["listen"].startswith("127."):
                        failures.add(where, "veto [http] listens on loopback: kubelet probes and Prometheus cannot reach it")
                    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                        port = c.get(probe, {}).get("httpGet", {}).get("port")
                        if ports.get(port, port) != http_port:
                            failures.add(where, f"veto {probe} port {port} is not veto's [http] port {http_port}")
                    envoy_cm = next((cm for cc in pod["containers"] if cc["name"] == "envoy"
                                     for cm in (mounts.get(m["name"]) for m in cc.get("volumeMounts", []))
                                     if cm in envoy_configs), None)
                    if envoy_cm and cluster_port(envoy_configs[envoy_cm], "veto_authz") != port_of(cfg["grpc"]["listen"]):
                        failures.add(where, "Envoy's veto_authz cluster port is not veto's [grpc] port")

    for where, provider in custom_policies:
        grpc = providers.get(provider)
        if grpc is None:
            failures.add(where, f"provider {provider!r} is not in any mesh extensionProviders")
        elif (grpc["service"], int(grpc["port"])) not in service_entries:
            failures.add(where, f"provider {provider!r} points at {grpc['service']}:{grpc['port']}, no ServiceEntry has it")
    for name, cfg in veto_configs.items():
        for grpc in providers.values():
            if int(grpc["port"]) != port_of(cfg["grpc"]["listen"]):
                failures.add(f"ConfigMap/{name}", f"mesh provider port {grpc['port']} is not veto's [grpc] port")
    failures.exit(f"k8s cross-checks OK ({len(docs)} resources, {checked} custom resources schema-checked)")


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

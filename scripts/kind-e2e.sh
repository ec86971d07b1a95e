#!/usr/bin/env bash
# `make kind-e2e`: the product end to end on a local kind cluster, torn down afterwards.
#   1. a kind cluster from k8s/kind/cluster.yaml (a control plane, `cpu` and `gpu` worker pools)
#   2. the KubeRay operator 1.7.0 from its Helm repository
#   3. the CPU image, built (scripts/build-image.sh cpu) and loaded into kind
#   4. the chart with ci/kind-values.yaml and k8s/kind/values.yaml (MinIO on) and its prepare
#      RayJob, followed to SUCCEEDED; then its train RayJob (a helm upgrade enables it), too
#   5. `ray-pipeline submit`: a one-epoch training run of its own, followed to SUCCEEDED
#   6. the checkpoints and summaries of both runs are in MinIO (read by an mc pod of the release)
# Needs docker (with a running engine), kind, helm, kubectl and python3 >= 3.10. It uses its own
# kubeconfig and touches no other cluster.
#   KEEP_CLUSTER=1      keep the cluster (and print how to reach it)
#   E2E_ARTIFACTS=DIR   write diagnostics there when a step fails (else to stderr)
#   JOB_TIMEOUT_S=N     how long each RayJob may take (default 1500)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

CLUSTER="ray-pipeline-e2e" # also the name in k8s/kind/cluster.yaml
KUBERAY_VERSION="1.7.0"
KUBERAY_REPO="https://ray-project.github.io/kuberay-helm/"
NAMESPACE="ml"
RELEASE="rp"
FULLNAME="$RELEASE-ray-pipeline"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
IMAGE="ghcr.io/ray-pipeline/ray-pipeline:$VERSION"
JOB_TIMEOUT_S="${JOB_TIMEOUT_S:-1500}"
CHART=(helm/ray-pipeline --namespace "$NAMESPACE"
  --values helm/ray-pipeline/ci/kind-values.yaml --values k8s/kind/values.yaml)
# kind values: pipelineConfig.train.epochs 2, the default run name, bucket ray-pipeline.
BUCKET="ray-pipeline"
EXPECTED_OBJECTS=(
  runs/digits-cnn/epoch-0002/state.pt runs/digits-cnn/summary.json
  runs/e2e-submit/epoch-0001/state.pt runs/e2e-submit/summary.json
)

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

missing=()
for tool in docker kind helm kubectl python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (make kind-e2e needs docker, kind, helm, kubectl, python3)"
docker info >/dev/null 2>&1 || die "the docker engine is not reachable (docker info failed)"

WORK="$(mktemp -d)"
export KUBECONFIG="$WORK/kubeconfig"

diagnostics() {
  local out="${E2E_ARTIFACTS:-}"
  if [ -n "$out" ]; then mkdir -p "$out"; exec 3>"$out/diagnostics.txt"; else exec 3>&2; fi
  {
    echo "=== objects"
    kubectl get rayjobs,rayclusters,jobs,pods -A -o wide
    echo "=== rayjobs"
    kubectl -n "$NAMESPACE" get rayjobs -o yaml
    echo "=== events"
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 80
    for job in $(kubectl -n "$NAMESPACE" get jobs -o name); do
      echo "=== logs of $job (the RayJob's submitter: the driver's output)"
      kubectl -n "$NAMESPACE" logs "$job" --tail=200 --all-containers
    done
    echo "=== operator"
    kubectl -n kuberay-system logs deploy/kuberay-operator --tail=200
    for pod in $(kubectl -n "$NAMESPACE" get pods -l ray.io/node-type=head -o name); do
      echo "=== $pod"
      kubectl -n "$NAMESPACE" logs "$pod" --tail=100 --all-containers
    done
  } >&3 2>&1 || true
  [ -z "$out" ] || echo "diagnostics in $out/diagnostics.txt" >&2
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ "$rc" -eq 0 ] || diagnostics
  if [ "${KEEP_CLUSTER:-0}" = "1" ]; then
    log "keeping kind cluster $CLUSTER: export KUBECONFIG=$KUBECONFIG; kind delete cluster --name $CLUSTER when done"
  else
    log "tearing down kind cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  if [ "$rc" -eq 0 ]; then log "kind e2e passed"; else log "kind e2e FAILED ($rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The RayJob's deployment and Ray job status, as kubectl reads them.
rayjob_state() {
  kubectl -n "$NAMESPACE" get rayjob "$1" \
    -o jsonpath='{.status.jobDeploymentStatus}/{.status.jobStatus}'
}

# Follow a RayJob with the product's own `ray-pipeline status`, then check with kubectl.
follow_rayjob() {
  "$WORK/venv/bin/ray-pipeline" status --namespace "$NAMESPACE" --follow \
    --timeout "$JOB_TIMEOUT_S" "$1"
  [ "$(rayjob_state "$1")" = "Complete/SUCCEEDED" ] ||
    die "RayJob $1 is $(rayjob_state "$1"), not Complete/SUCCEEDED"
}

wait_pod() { # wait_pod NAME TIMEOUT_S: until it Succeeded (0) or Failed (1)
  local deadline=$((SECONDS + $2)) phase
  while [ "$SECONDS" -lt "$deadline" ]; do
    phase="$(kubectl -n "$NAMESPACE" get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    case "$phase" in
      Succeeded) return 0 ;;
      Failed) return 1 ;;
    esac
    sleep 3
  done
  echo "pod $1 still ${phase:-not started} after $2 s" >&2
  return 1
}

log "ray-pipeline CLI (submit, status) in $WORK/venv"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$ROOT"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check \
  "kubernetes>=30" "pydantic>=2.6" "pyyaml>=6"
"$WORK/venv/bin/ray-pipeline" --version

log "kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "deleting the $CLUSTER left by an earlier run"
  kind delete cluster --name "$CLUSTER"
fi
kind create cluster --name "$CLUSTER" --config k8s/kind/cluster.yaml \
  --kubeconfig "$KUBECONFIG" --wait 180s
kubectl get nodes --label-columns ray-pipeline.io/pool

log "KubeRay operator $KUBERAY_VERSION"
helm install kuberay-operator kuberay-operator --repo "$KUBERAY_REPO" \
  --version "$KUBERAY_VERSION" --namespace kuberay-system --create-namespace \
  --wait --timeout 5m
kubectl wait --for condition=Established --timeout 60s \
  crd/rayclusters.ray.io crd/rayjobs.ray.io

log "image $IMAGE"
bash scripts/build-image.sh cpu
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "chart: release $RELEASE in $NAMESPACE (MinIO), with the prepare RayJob"
helm install "$RELEASE" "${CHART[@]}" --create-namespace \
  --set rayJobs.prepare.enabled=true --wait --timeout 10m
kubectl -n "$NAMESPACE" get raycluster,rayjob

log "prepare: RayJob $FULLNAME-prepare-1"
follow_rayjob "$FULLNAME-prepare-1"

log "train: RayJob $FULLNAME-train-1 (helm upgrade enables it)"
helm upgrade "$RELEASE" "${CHART[@]}" \
  --set rayJobs.prepare.enabled=true --set rayJobs.train.enabled=true --wait --timeout 10m
follow_rayjob "$FULLNAME-train-1"

log "ray-pipeline submit: a run of its own, one epoch"
"$WORK/venv/bin/ray-pipeline" submit --namespace "$NAMESPACE" --release "$RELEASE" \
  --set storage.run_name=e2e-submit --set train.epochs=1 --timeout "$JOB_TIMEOUT_S" |
  tee "$WORK/submit.json"
submitted="$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["name"])' <"$WORK/submit.json")"
[ "$(rayjob_state "$submitted")" = "Complete/SUCCEEDED" ] ||
  die "RayJob $submitted is $(rayjob_state "$submitted")"

log "checkpoints in MinIO (bucket $BUCKET)"
MC_IMAGE="$(helm get values "$RELEASE" --namespace "$NAMESPACE" --all --output json |
  python3 -c 'import json,sys; i=json.load(sys.stdin)["minio"]["mcImage"]; print(i["repository"]+":"+i["tag"])')"
# A pod of the release: MinIO's NetworkPolicy admits only those.
kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: e2e-checkpoints
  namespace: $NAMESPACE
  labels:
    app.kubernetes.io/name: ray-pipeline
    app.kubernetes.io/instance: $RELEASE
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 100
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: mc
      image: $MC_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["/bin/sh", "-ec"]
      args:
        - |
          mc alias set minio "\$S3_ENDPOINT" "\$AWS_ACCESS_KEY_ID" "\$AWS_SECRET_ACCESS_KEY" >/dev/null
          mc ls --recursive "minio/$BUCKET/runs/"
          for key in ${EXPECTED_OBJECTS[*]}; do
            mc stat "minio/$BUCKET/\$key" >/dev/null || { echo "missing: \$key"; exit 1; }
          done
          echo "found: ${EXPECTED_OBJECTS[*]}"
      env:
        - name: HOME
          value: /tmp
        - name: MC_CONFIG_DIR
          value: /tmp/.mc
        - name: S3_ENDPOINT
          value: http://$FULLNAME-minio.$NAMESPACE.svc:9000
        - name: AWS_ACCESS_KEY_ID
          valueFrom:
            secretKeyRef:
              name: $FULLNAME-s3
              key: AWS_ACCESS_KEY_ID
        - name: AWS_SECRET_ACCESS_KEY
          valueFrom:
            secretKeyRef:
              name: $FULLNAME-s3
              key: AWS_SECRET_ACCESS_KEY
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: ["ALL"]
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir: {}
EOF
checked=0
wait_pod e2e-checkpoints 300 && checked=1
kubectl -n "$NAMESPACE" logs e2e-checkpoints || true
[ "$checked" = 1 ] || die "the checkpoints are not all in MinIO"

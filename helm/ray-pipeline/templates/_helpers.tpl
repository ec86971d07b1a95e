{{/*
Names, labels and the RayCluster spec. Every template takes its names and labels from here, and
the RayCluster spec is one named template so that a RayJob can embed the very same spec
(`rayClusterSpec: {{ include "ray-pipeline.rayClusterSpec" . | nindent 4 }}`).
*/}}

{{/* The fixed path of the pipeline config in every Ray container. */}}
{{- define "ray-pipeline.configDir" -}}/etc/ray-pipeline{{- end -}}
{{- define "ray-pipeline.configPath" -}}{{ include "ray-pipeline.configDir" . }}/config.yaml{{- end -}}

{{- define "ray-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>`, or the release name when it already contains the chart name. */}}
{{- define "ray-pipeline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The RayCluster's name; KubeRay derives `<name>-head-svc` and the auth Secret from it. */}}
{{- define "ray-pipeline.clusterName" -}}
{{- include "ray-pipeline.fullname" . -}}
{{- end -}}

{{/*
A name as KubeRay 1.7 clips it for the objects it creates (utils/util.go: CheckName): longer than
50 characters, it keeps the last 50; a digit or punctuation first becomes `r`. The operator names
the auth Secret, the autoscaler's Role and RoleBinding and (with autoscaling) the head pod's
ServiceAccount this way.
*/}}
{{- define "ray-pipeline.kuberayName" -}}
{{- $s := toString . -}}
{{- if gt (len $s) 50 -}}
{{- $s = substr (int (sub (len $s) 50)) (len $s) $s -}}
{{- end -}}
{{- if regexMatch "^[0-9[:punct:]]" $s -}}
{{- $s = printf "r%s" (substr 1 (len $s) $s) -}}
{{- end -}}
{{- $s -}}
{{- end -}}

{{/* The Secret holding the Ray token: ray.auth.existingSecret, else the one KubeRay creates. */}}
{{- define "ray-pipeline.authSecretName" -}}
{{- default (include "ray-pipeline.kuberayName" (include "ray-pipeline.clusterName" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{/* Does the release render its long-lived RayCluster? Not in rayJobs.mode=ephemeral. */}}
{{- define "ray-pipeline.longLivedCluster" -}}
{{- if ne (.Values.rayJobs | default dict).mode "ephemeral" -}}true{{- end -}}
{{- end -}}

{{- define "ray-pipeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that identify this release's pods (NetworkPolicy peers select on these). */}}
{{- define "ray-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ray-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ray-pipeline.labels" -}}
helm.sh/chart: {{ include "ray-pipeline.chart" . }}
{{ include "ray-pipeline.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ray-pipeline
{{- end -}}

{{/* Labels of a component's pods: (dict "root" $ "component" "ray") */}}
{{- define "ray-pipeline.componentSelectorLabels" -}}
{{ include "ray-pipeline.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ray-pipeline.componentLabels" -}}
{{ include "ray-pipeline.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Labels for a RayJob's submitterPodTemplate: they make the submitter a pod of this release, which
the NetworkPolicy admits to the Ray ports.
*/}}
{{- define "ray-pipeline.submitterPodLabels" -}}
{{ include "ray-pipeline.componentLabels" (dict "root" . "component" "submitter") }}
{{- end -}}

{{- define "ray-pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- /* KubeRay clips the head pod's account name with autoscaling (common/pod.go:
DefaultHeadPodTemplate): the account the chart creates has the clipped name from the start. */ -}}
{{- include "ray-pipeline.kuberayName" (default (include "ray-pipeline.fullname" .) .Values.serviceAccount.name) -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ray-pipeline.configMapName" -}}
{{- printf "%s-config" (include "ray-pipeline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the S3 keys (existing, or created for local use). */}}
{{- define "ray-pipeline.s3SecretName" -}}
{{- default (printf "%s-s3" (include "ray-pipeline.fullname" .) | trunc 63 | trimSuffix "-") .Values.s3.credentials.existingSecret -}}
{{- end -}}

{{- define "ray-pipeline.minioName" -}}
{{- printf "%s-minio" (include "ray-pipeline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The S3 endpoint the pipeline uses: the in-chart MinIO, s3.endpoint, or empty (AWS). */}}
{{- define "ray-pipeline.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "ray-pipeline.minioName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The product image for a group: (dict "root" $ "gpu" <count>); GPU groups get `<tag>-gpu`. */}}
{{- define "ray-pipeline.image" -}}
{{- $image := .root.Values.image -}}
{{- $tag := toString (default .root.Chart.AppVersion $image.tag) -}}
{{- if gt (int .gpu) 0 -}}
{{- $tag = printf "%s%s" $tag $image.gpuTagSuffix -}}
{{- end -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}

{{/* Whole CPUs of a CPU quantity, rounded up the way KubeRay does ("500m" -> 1, "2" -> 2). */}}
{{- define "ray-pipeline.cpuCount" -}}
{{- $q := toString . -}}
{{- if hasSuffix "m" $q -}}
{{- div (add (atoi (trimSuffix "m" $q)) 999) 1000 -}}
{{- else -}}
{{- ceil (float64 $q) | int -}}
{{- end -}}
{{- end -}}

{{/*
The Ray node labels a group's placement selector uses: (dict "root" $ "name" <group>).
With ray.groupLabels on and the group carrying rayLabels: those labels (KubeRay puts them on the
Ray node and the autoscaler sees them). Otherwise: ray.io/node-group, which Ray (2.60: resource_and_label_spec.py,
_get_default_labels) derives from the RAY_NODE_TYPE_NAME env that KubeRay sets to the group name.
*/}}
{{- define "ray-pipeline.groupSelector" -}}
{{- $group := index .root.Values.workerGroups .name -}}
{{- if and .root.Values.ray.groupLabels $group.rayLabels -}}
{{- toYaml $group.rayLabels -}}
{{- else -}}
ray.io/node-group: {{ .name }}
{{- end -}}
{{- end -}}

{{/* How many Ray Train workers the train group holds: one per GPU, or one per pod without GPUs. */}}
{{- define "ray-pipeline.trainWorkersPerPod" -}}
{{- $group := index .Values.workerGroups .Values.placement.trainGroup -}}
{{- max 1 (int $group.resources.gpu) -}}
{{- end -}}

{{- define "ray-pipeline.trainPods" -}}
{{- $group := index .Values.workerGroups .Values.placement.trainGroup -}}
{{- if .Values.autoscaling.enabled -}}
{{- int $group.maxReplicas -}}
{{- else -}}
{{- int $group.replicas -}}
{{- end -}}
{{- end -}}

{{/*
The pipeline config (pipeline/config.py schema): defaults derived from s3.bucket, then the user's
pipelineConfig, then the keys the chart owns (placement selectors, train sizing, S3 endpoint).
*/}}
{{- define "ray-pipeline.pipelineConfig" -}}
{{- include "ray-pipeline.validateValues" . -}}
{{- $bucket := .Values.s3.bucket -}}
{{- $defaults := dict
      "data" (dict "uri" (printf "s3://%s/digits" $bucket))
      "storage" (dict "checkpoint_uri" (printf "s3://%s/runs" $bucket)) -}}
{{- if .Values.autoscaling.enabled -}}
{{- /* Groups may be at zero: the pipeline asks the autoscaler for a node and waits. */ -}}
{{- $wait := dict "wait_s" (int .Values.autoscaling.placementWaitSeconds) -}}
{{- $_ := set $defaults.data "placement" (deepCopy $wait) -}}
{{- $_ := set $defaults "train" (dict "placement" (deepCopy $wait)) -}}
{{- end -}}
{{- $trainGroup := index .Values.workerGroups .Values.placement.trainGroup -}}
{{- $gpus := int $trainGroup.resources.gpu -}}
{{- $perWorker := dict "CPU" 1 -}}
{{- if gt $gpus 0 -}}
{{- $_ := set $perWorker "GPU" 1 -}}
{{- end -}}
{{- $s3 := dict "region" .Values.s3.region -}}
{{- with include "ray-pipeline.s3Endpoint" . -}}
{{- $_ := set $s3 "endpoint" . -}}
{{- end -}}
{{- $owned := dict
      "data" (dict "placement" (dict "selector" (include "ray-pipeline.groupSelector" (dict "root" . "name" .Values.placement.dataGroup) | fromYaml)))
      "train" (dict
        "placement" (dict "selector" (include "ray-pipeline.groupSelector" (dict "root" . "name" .Values.placement.trainGroup) | fromYaml))
        "num_workers" (mul (include "ray-pipeline.trainPods" . | int) (include "ray-pipeline.trainWorkersPerPod" . | int))
        "use_gpu" (gt $gpus 0)
        "resources_per_worker" $perWorker)
      "s3" $s3
      "tracking" (include "ray-pipeline.trackingConfig" . | fromYaml) -}}
{{- $user := deepCopy (default (dict) .Values.pipelineConfig) -}}
{{- toYaml (mergeOverwrite $defaults $user $owned) -}}
{{- end -}}

{{/*
Checks JSON Schema cannot express. Each message names the value to fix.
*/}}
{{- define "ray-pipeline.validateValues" -}}
{{- $root := . -}}
{{- $autoscaling := .Values.autoscaling.enabled -}}
{{- /* utils/validation.go: ValidateRayClusterMetadata (at most 53 characters, a DNS-1035 label). */ -}}
{{- $cluster := include "ray-pipeline.clusterName" . -}}
{{- if gt (len $cluster) 53 -}}
{{- fail (printf "the RayCluster name %s has %d characters; KubeRay allows 53: shorten the release name or set fullnameOverride" $cluster (len $cluster)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $cluster) -}}
{{- fail (printf "the RayCluster name %s is not a DNS-1035 label (lower case letters, digits and '-', a letter first), which KubeRay requires: rename the release or set fullnameOverride" $cluster) -}}
{{- end -}}
{{- range $path, $group := dict "head" .Values.head -}}
{{- include "ray-pipeline.validatePodLabels" (dict "path" $path "labels" $group.podLabels) -}}
{{- end -}}
{{- range $name, $group := .Values.workerGroups -}}
{{- include "ray-pipeline.validatePodLabels" (dict "path" (printf "workerGroups.%s" $name) "labels" $group.podLabels) -}}
{{- end -}}
{{- range $key, $_ := .Values.head.rayStartParams -}}
{{- if has $key (list "port" "dashboard-port" "ray-client-server-port" "metrics-export-port") -}}
{{- fail (printf "head.rayStartParams.%s: the head's container ports, its Service (KubeRay takes the Service's ports from the container's, common/service.go: getPortsFromCluster) and the NetworkPolicies use the default ports (6379, 8265, 10001, 8080); remove it" $key) -}}
{{- end -}}
{{- end -}}
{{- if and $autoscaling (not .Values.serviceAccount.create) (gt (len (include "ray-pipeline.serviceAccountName" .)) 50) -}}
{{- fail (printf "serviceAccount.name %s has more than 50 characters: with autoscaling KubeRay clips the head pod's account name to 50 (utils/util.go: CheckName), so the pod would use an account that does not exist" (include "ray-pipeline.serviceAccountName" .)) -}}
{{- end -}}
{{- range $name, $group := .Values.workerGroups -}}
{{- $min := int $group.minReplicas -}}
{{- $max := int $group.maxReplicas -}}
{{- if gt $min $max -}}
{{- fail (printf "workerGroups.%s.minReplicas (%d) is above maxReplicas (%d)" $name $min $max) -}}
{{- end -}}
{{- if not $autoscaling -}}
{{- $replicas := int $group.replicas -}}
{{- if or (lt $replicas $min) (gt $replicas $max) -}}
{{- fail (printf "workerGroups.%s.replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" $name $replicas $min $max) -}}
{{- end -}}
{{- end -}}
{{- include "ray-pipeline.validateEnv" (dict "path" (printf "workerGroups.%s.env" $name) "env" $group.env) -}}
{{- include "ray-pipeline.validateRayStartParams" (dict "path" (printf "workerGroups.%s" $name) "params" $group.rayStartParams) -}}
{{- range $key, $_ := $group.rayLabels -}}
{{- if hasPrefix "ray.io/" $key -}}
{{- fail (printf "workerGroups.%s.rayLabels: %s uses the ray.io/ prefix, which Ray reserves for its own labels (ray.io/node-group is set by KubeRay already)" $name $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- include "ray-pipeline.validateEnv" (dict "path" "head.env" "env" .Values.head.env) -}}
{{- include "ray-pipeline.validateRayStartParams" (dict "path" "head" "params" .Values.head.rayStartParams) -}}
{{- range $image := list "image" "mcImage" -}}
{{- if eq (toString (index $root.Values.minio $image).tag) "latest" -}}
{{- fail (printf "minio.%s.tag is latest: pin a published release tag (MinIO no longer publishes community images)" $image) -}}
{{- end -}}
{{- end -}}
{{- range $role, $groupName := dict "dataGroup" .Values.placement.dataGroup "trainGroup" .Values.placement.trainGroup -}}
{{- if not (hasKey $root.Values.workerGroups $groupName) -}}
{{- fail (printf "placement.%s (%s) names no group in workerGroups (groups: %s)" $role $groupName (keys $root.Values.workerGroups | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if $autoscaling -}}
{{- $selector := include "ray-pipeline.groupSelector" (dict "root" $root "name" $groupName) | fromYaml -}}
{{- if hasKey $selector "ray.io/node-group" -}}
{{- fail (printf "autoscaling.enabled needs Ray labels on workerGroups.%s (set ray.groupLabels=true and workerGroups.%s.rayLabels): the autoscaler only sees group-level labels, so work selecting ray.io/node-group=%s could never scale that group up" $groupName $groupName $groupName) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $trainGroup := index .Values.workerGroups .Values.placement.trainGroup -}}
{{- $trainPods := include "ray-pipeline.trainPods" . | int -}}
{{- if lt $trainPods 1 -}}
{{- fail (printf "workerGroups.%s.%s is 0: Ray Train needs at least one pod in the train group" .Values.placement.trainGroup (ternary "maxReplicas" "replicas" $autoscaling)) -}}
{{- end -}}
{{- $workersPerPod := include "ray-pipeline.trainWorkersPerPod" . | int -}}
{{- $cpus := include "ray-pipeline.cpuCount" $trainGroup.resources.cpu | int -}}
{{- if lt $cpus $workersPerPod -}}
{{- fail (printf "workerGroups.%s.resources.cpu (%v) is below one CPU for each of its %d Ray Train workers (one per GPU)" .Values.placement.trainGroup $trainGroup.resources.cpu $workersPerPod) -}}
{{- end -}}
{{- $owned := dict
      "data" (list "placement.selector")
      "train" (list "placement.selector" "num_workers" "use_gpu" "resources_per_worker")
      "s3" (list "endpoint" "region") -}}
{{- $why := dict
      "data" (printf "from workerGroups.%s (placement.dataGroup)" .Values.placement.dataGroup)
      "train" (printf "from workerGroups.%s (placement.trainGroup)" .Values.placement.trainGroup)
      "s3" "from s3.endpoint / s3.region (or the in-chart MinIO)" -}}
{{- $config := default (dict) .Values.pipelineConfig -}}
{{- range $section, $keys := $owned -}}
{{- $values := default (dict) (get $config $section) -}}
{{- range $key := $keys -}}
{{- $node := $values -}}
{{- $parts := splitList "." $key -}}
{{- range $part := initial $parts -}}
{{- if kindIs "map" $node -}}
{{- $node = get $node $part -}}
{{- end -}}
{{- end -}}
{{- if and (kindIs "map" $node) (hasKey $node (last $parts)) -}}
{{- fail (printf "pipelineConfig.%s.%s is set by the chart %s; remove it from pipelineConfig" $section $key (get $why $section)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- include "ray-pipeline.refuseCredentials" (dict "path" "pipelineConfig" "node" $config) -}}
{{- $credentials := .Values.s3.credentials -}}
{{- if and $credentials.createSecret.enabled $credentials.existingSecret -}}
{{- fail (printf "s3.credentials.createSecret.enabled and s3.credentials.existingSecret (%s) are both set: use an existing Secret, or let the chart create one for local use, not both" $credentials.existingSecret) -}}
{{- end -}}
{{- if and $credentials.useAmbient (or $credentials.createSecret.enabled $credentials.existingSecret) -}}
{{- fail "s3.credentials.useAmbient is on, so no key Secret is used: unset s3.credentials.existingSecret and s3.credentials.createSecret.enabled" -}}
{{- end -}}
{{- if and .Values.minio.enabled $credentials.useAmbient -}}
{{- fail "minio.enabled needs a key Secret for MinIO's root user: set s3.credentials.useAmbient=false" -}}
{{- end -}}
{{- if and $autoscaling (eq (include "ray-pipeline.serviceAccountName" .) "default") -}}
{{- fail "autoscaling.enabled binds the autoscaler's Role to the head's ServiceAccount: with serviceAccount.create=false, set serviceAccount.name to a dedicated account, not default" -}}
{{- end -}}
{{- if and .Values.ray.auth.enabled (semverCompare "<2.52.0-0" (toString .Values.ray.version)) -}}
{{- fail (printf "ray.auth.enabled needs Ray 2.52 or newer; ray.version is %s" .Values.ray.version) -}}
{{- end -}}
{{- end -}}

{{/* A name that holds a credential (keys of the config, names of env vars). */}}
{{- define "ray-pipeline.credentialPattern" -}}
(?i)(secret|passw|credential|access_key|api_key|(^|_)token$)
{{- end -}}

{{/* Credential-like keys anywhere in the pipeline config are refused: it becomes a ConfigMap. */}}
{{- define "ray-pipeline.refuseCredentials" -}}
{{- $path := .path -}}
{{- range $key, $value := .node -}}
{{- if regexMatch (include "ray-pipeline.credentialPattern" .) (toString $key) -}}
{{- fail (printf "%s.%s: credentials never go into the pipeline config (it is a ConfigMap); put S3 keys in the Secret named by s3.credentials.existingSecret" $path $key) -}}
{{- end -}}
{{- if kindIs "map" $value -}}
{{- include "ray-pipeline.refuseCredentials" (dict "path" (printf "%s.%s" $path $key) "node" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Pod labels KubeRay and the chart select on: (dict "path" "head" "labels" ..). KubeRay lets a
template override app.kubernetes.io/created-by on the pod, but the head Service keeps selecting
created-by=kuberay-operator (common/service.go: BuildServiceForHeadPod) and would select nothing.
*/}}
{{- define "ray-pipeline.validatePodLabels" -}}
{{- $path := .path -}}
{{- range $key, $_ := .labels -}}
{{- if or (hasPrefix "ray.io/" $key) (has $key (list "app.kubernetes.io/created-by" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component")) -}}
{{- fail (printf "%s.podLabels.%s is set by KubeRay or the chart (the head Service and the NetworkPolicies select on it); remove it" $path $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* rayStartParams the chart owns: (dict "path" "workerGroups.data" "params" ..) */}}
{{- define "ray-pipeline.validateRayStartParams" -}}
{{- $owned := dict
      "num-cpus" "resources.cpu (the head: always 0)"
      "num-gpus" "resources.gpu"
      "memory" "resources.memory"
      "resources" "resources"
      "labels" "rayLabels"
      "metrics-export-port" "the `metrics` container port (8080), which the PodMonitor and the NetworkPolicy use"
      "dashboard-host" "the chart (0.0.0.0 behind a ClusterIP service)"
      "address" "KubeRay"
      "block" "KubeRay" -}}
{{- range $key, $_ := .params -}}
{{- if hasKey $owned $key -}}
{{- fail (printf "%s.rayStartParams.%s is set from %s; remove it" $.path $key (get $owned $key)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Env entries set by the chart, and credentials as literals, are refused: (dict "path" .. "env" ..) */}}
{{- define "ray-pipeline.validateEnv" -}}
{{- $path := .path -}}
{{- range $i, $var := .env -}}
{{- if has $var.name (list "RAY_PIPELINE_CONFIG" "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_ENDPOINT_URL_S3" "MLFLOW_TRACKING_URI" "MLFLOW_TRACKING_USERNAME" "MLFLOW_TRACKING_PASSWORD" "MLFLOW_TRACKING_TOKEN" "WANDB_API_KEY") -}}
{{- fail (printf "%s[%d]: %s is set by the chart (config path / s3.credentials / s3.endpoint / tracking.*); remove it" $path $i $var.name) -}}
{{- end -}}
{{- if and (hasKey $var "value") (regexMatch (include "ray-pipeline.credentialPattern" $) $var.name) -}}
{{- fail (printf "%s[%d]: %s has a literal value; credentials come only from Secrets (valueFrom.secretKeyRef)" $path $i $var.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Ray's metrics export port on every Ray container, named `metrics` as KubeRay names it (common/pod.go
adds `metrics: 8080` to a Ray container without one and passes it as --metrics-export-port). The
PodMonitor scrapes it by name, the NetworkPolicy admits networkPolicy.metricsFrom to it.
*/}}
{{- define "ray-pipeline.metricsPort" -}}8080{{- end -}}

{{/* Container ports KubeRay and clients expect on the head. */}}
{{- define "ray-pipeline.headPorts" -}}
- name: gcs-server
  containerPort: 6379
- name: dashboard
  containerPort: 8265
- name: client
  containerPort: 10001
- name: metrics
  containerPort: {{ include "ray-pipeline.metricsPort" . }}
{{- end -}}

{{/* Env of every Ray container: the config path, Ray's node settings, the S3 keys from the Secret. */}}
{{- define "ray-pipeline.rayEnv" -}}
- name: RAY_PIPELINE_CONFIG
  value: {{ include "ray-pipeline.configPath" .root | quote }}
{{- range $name, $value := .root.Values.ray.nodeEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- if not .root.Values.s3.credentials.useAmbient }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "ray-pipeline.s3SecretName" .root }}
      key: {{ .root.Values.s3.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "ray-pipeline.s3SecretName" .root }}
      key: {{ .root.Values.s3.credentials.secretAccessKeyKey }}
{{- end }}
{{- with include "ray-pipeline.s3EndpointURL" .root }}
{{- /* boto3 (Ray downloads s3:// working_dir and py_modules packages with it) reads this. */}}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
{{- include "ray-pipeline.trackingEnv" .root }}
{{- with .group.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The S3 endpoint as a URL (boto3 needs the scheme): the pipeline's default scheme is https. */}}
{{- define "ray-pipeline.s3EndpointURL" -}}
{{- with include "ray-pipeline.s3Endpoint" . -}}
{{- if contains "://" . -}}
{{- . -}}
{{- else -}}
{{- printf "%s://%s" (default "https" (get (default (dict) $.Values.pipelineConfig.s3) "scheme")) . -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* requests == limits: Ray's CPU, GPU and memory counts come from these. */}}
{{- define "ray-pipeline.rayResources" -}}
{{- $r := .resources -}}
{{- $list := dict "cpu" (toString $r.cpu) "memory" (toString $r.memory) -}}
{{- if gt (int $r.gpu) 0 -}}
{{- $_ := set $list "nvidia.com/gpu" (toString (int $r.gpu)) -}}
{{- end -}}
requests:
  {{- toYaml $list | nindent 2 }}
limits:
  {{- toYaml $list | nindent 2 }}
{{- end -}}

{{/*
The pod template of a Ray group: (dict "root" $ "group" <values> "head" <bool>).
*/}}
{{- define "ray-pipeline.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $gpu := int ($group.resources.gpu | default 0) -}}
metadata:
  labels:
    {{- include "ray-pipeline.componentLabels" (dict "root" $root "component" "ray") | nindent 4 }}
    {{- with $group.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $group.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "ray-pipeline.serviceAccountName" $root }}
  {{- /* No Ray container gets a token: job drivers run user code there. Only the autoscaler
  sidecar talks to the Kubernetes API, with the projected token below (rayClusterSpec mounts it
  through autoscalerOptions.volumeMounts). */}}
  automountServiceAccountToken: false
  {{- if $root.Values.autoscaling.enabled }}
  {{- /* Autoscaler v2 replaces failed Ray pods itself; KubeRay requires Never. */}}
  restartPolicy: Never
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $group.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    {{- /* KubeRay treats the first container as the Ray container. */}}
    - name: {{ ternary "ray-head" "ray-worker" .head }}
      image: {{ include "ray-pipeline.image" (dict "root" $root "gpu" $gpu) | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- if .head }}
        {{- include "ray-pipeline.headPorts" $root | nindent 8 }}
        {{- else }}
        - name: metrics
          containerPort: {{ include "ray-pipeline.metricsPort" $root }}
        {{- end }}
      env:
        {{- include "ray-pipeline.rayEnv" (dict "root" $root "group" $group) | nindent 8 }}
      resources:
        {{- include "ray-pipeline.rayResources" $group | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: pipeline-config
          mountPath: {{ include "ray-pipeline.configDir" $root }}
          readOnly: true
        {{- if $group.shmSizeLimit }}
        - name: dshm
          mountPath: /dev/shm
        {{- end }}
  volumes:
    - name: pipeline-config
      configMap:
        name: {{ include "ray-pipeline.configMapName" $root }}
    {{- if and .head $root.Values.autoscaling.enabled }}
    {{- /* What automounting would give, for the autoscaler container alone. */}}
    - name: autoscaler-token
      projected:
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 3607
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
          - downwardAPI:
              items:
                - path: namespace
                  fieldRef:
                    fieldPath: metadata.namespace
    {{- end }}
    {{- with $group.shmSizeLimit }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ . | quote }}
    {{- end }}
{{- end -}}

{{/* rayStartParams as strings; the chart-owned keys are refused by values.schema.json. */}}
{{- define "ray-pipeline.rayStartParams" -}}
{{- $params := dict -}}
{{- range $key, $value := .extra -}}
{{- $_ := set $params $key (toString $value) -}}
{{- end -}}
{{- range $key, $value := .owned -}}
{{- $_ := set $params $key $value -}}
{{- end -}}
{{- if $params -}}
{{- toYaml $params -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
The whole RayCluster spec. Included by templates/raycluster.yaml, and meant to be included as
`spec.rayClusterSpec` of a RayJob that brings its own cluster, so both stay one definition.
*/}}
{{- define "ray-pipeline.rayClusterSpec" -}}
{{- include "ray-pipeline.rayClusterSpecOf" (dict "root" . "groups" (keys .Values.workerGroups)) -}}
{{- end -}}

{{/*
The spec with the head and only the named worker groups: (dict "root" $ "groups" (list ..)).
"longLived" adds what only the release's own RayCluster may have (upgradeStrategy: KubeRay
refuses it on a RayJob's cluster, utils/validation.go: ValidateRayClusterUpgradeOptions).
*/}}
{{- define "ray-pipeline.rayClusterSpecOf" -}}
{{- $root := .root -}}
{{- $groups := .groups -}}
{{- $longLived := .longLived -}}
{{- with $root -}}
{{- include "ray-pipeline.validateValues" . -}}
rayVersion: {{ .Values.ray.version | quote }}
{{- if and $longLived .Values.upgradeStrategy }}
upgradeStrategy:
  type: {{ .Values.upgradeStrategy }}
{{- end }}
authOptions:
  {{- if .Values.ray.auth.enabled }}
  mode: token
  {{- with .Values.ray.auth.existingSecret }}
  secretName: {{ . }}
  {{- end }}
  {{- else }}
  mode: disabled
  {{- end }}
enableInTreeAutoscaling: {{ .Values.autoscaling.enabled }}
{{- if .Values.autoscaling.enabled }}
autoscalerOptions:
  version: v2
  idleTimeoutSeconds: {{ int .Values.autoscaling.idleTimeoutSeconds }}
  upscalingMode: {{ .Values.autoscaling.upscalingMode }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  resources:
    {{- toYaml .Values.autoscaling.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: autoscaler-token
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
{{- end }}
headGroupSpec:
  # The dashboard and job API stay inside the cluster: reach them with kubectl port-forward.
  serviceType: ClusterIP
  enableIngress: false
  rayStartParams:
    {{- include "ray-pipeline.rayStartParams" (dict "extra" .Values.head.rayStartParams "owned" (dict "num-cpus" "0" "dashboard-host" "0.0.0.0")) | nindent 4 }}
  template:
    {{- include "ray-pipeline.rayPodTemplate" (dict "root" $root "group" .Values.head "head" true) | nindent 4 }}
workerGroupSpecs:
{{- range $name, $group := .Values.workerGroups }}
{{- if has $name $groups }}
  - groupName: {{ $name }}
    {{- if not $root.Values.autoscaling.enabled }}
    {{- /* With autoscaling the autoscaler owns replicas; an upgrade must not reset it. */}}
    replicas: {{ int $group.replicas }}
    {{- end }}
    minReplicas: {{ int $group.minReplicas }}
    maxReplicas: {{ int $group.maxReplicas }}
    {{- if and $root.Values.autoscaling.enabled (hasKey $group "idleTimeoutSeconds") }}
    idleTimeoutSeconds: {{ int $group.idleTimeoutSeconds }}
    {{- end }}
    {{- if and $root.Values.ray.groupLabels $group.rayLabels }}
    labels:
      {{- toYaml $group.rayLabels | nindent 6 }}
    {{- end }}
    rayStartParams:
      {{- include "ray-pipeline.rayStartParams" (dict "extra" $group.rayStartParams "owned" (dict)) | nindent 6 }}
    template:
      {{- include "ray-pipeline.rayPodTemplate" (dict "root" $root "group" $group "head" false) | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

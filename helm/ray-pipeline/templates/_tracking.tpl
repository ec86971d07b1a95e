{{/*
Experiment tracking (pipeline/tracking.py): the tracker's address and credentials on every Ray
container (the release's RayCluster and every RayJob's), and the pipeline config's `tracking`
section. Credentials come only from an existing Secret, by key; keys missing from it are left
unset (`optional`), so one Secret may hold a username and password, or a token.
*/}}

{{/* Env of every Ray container for the trackers: MLFLOW_TRACKING_* and WANDB_*. */}}
{{- define "ray-pipeline.trackingEnv" -}}
{{- $mlflow := .Values.tracking.mlflow -}}
{{- if $mlflow.uri }}
- name: MLFLOW_TRACKING_URI
  value: {{ $mlflow.uri | quote }}
{{- with $mlflow.credentials.existingSecret }}
{{- $secret := . }}
{{- range $env, $key := dict "MLFLOW_TRACKING_USERNAME" $mlflow.credentials.usernameKey "MLFLOW_TRACKING_PASSWORD" $mlflow.credentials.passwordKey "MLFLOW_TRACKING_TOKEN" $mlflow.credentials.tokenKey }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- $wandb := .Values.tracking.wandb -}}
{{- if $wandb.project }}
{{- with $wandb.baseUrl }}
- name: WANDB_BASE_URL
  value: {{ . | quote }}
{{- end }}
{{- with $wandb.credentials.existingSecret }}
- name: WANDB_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $wandb.credentials.apiKeyKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pipeline config's `tracking` section, from tracking.* (empty values are left out). */}}
{{- define "ray-pipeline.trackingConfig" -}}
{{- $mlflow := .Values.tracking.mlflow -}}
{{- $wandb := .Values.tracking.wandb -}}
{{- $out := dict -}}
{{- if $mlflow.uri -}}
{{- $m := dict "uri" $mlflow.uri "log_model" $mlflow.logModel -}}
{{- with $mlflow.experiment }}{{ $_ := set $m "experiment" . }}{{ end -}}
{{- $_ := set $out "mlflow" $m -}}
{{- end -}}
{{- if $wandb.project -}}
{{- $w := dict "project" $wandb.project -}}
{{- with $wandb.entity }}{{ $_ := set $w "entity" . }}{{ end -}}
{{- $_ := set $out "wandb" $w -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

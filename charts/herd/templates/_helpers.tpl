{{/* The release's base name: the release name, suffixed with the chart name unless it already holds it. */}}
{{- define "herd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herd.labels" -}}
app.kubernetes.io/name: herd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "herd.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* A node selector as herd's settings spell it: key=value,key=value. */}}
{{- define "herd.selector" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%v" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "herd.mlflowName" -}}
{{- printf "%s-mlflow" (include "herd.fullname" .) -}}
{{- end -}}

{{- define "herd.mlflowNamespace" -}}
{{- .Values.mlflow.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "herd.trackingUri" -}}
{{- if .Values.stage.mlflowTrackingUri -}}
{{- .Values.stage.mlflowTrackingUri -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "herd.mlflowName" .) (include "herd.mlflowNamespace" .) (int .Values.mlflow.port) -}}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every container this chart or herd starts. */}}
{{- define "herd.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ . }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "herd.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Node selectors of the pools; an empty value means herd's default pool label. */}}
{{- define "herd.gpuPool" -}}
{{- toJson (.Values.nodePools.gpu.nodeSelector | default (dict "herd.dev/pool" "h100")) -}}
{{- end -}}

{{- define "herd.cpuPool" -}}
{{- toJson (.Values.nodePools.cpu.nodeSelector | default (dict "herd.dev/pool" "cpu")) -}}
{{- end -}}

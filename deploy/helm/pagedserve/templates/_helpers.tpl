{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "pagedserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name "<release>-<chart>", or the release name alone when it already contains the chart name. */}}
{{- define "pagedserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pagedserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pagedserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pagedserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pagedserve
{{- end }}

{{- define "pagedserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pagedserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pagedserve.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if hasPrefix "@" $tag }}
{{- printf "%s%s" .Values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Claim that holds the model: the user's (pvc, hfcache) or the chart's (hub); empty for bundled. */}}
{{- define "pagedserve.modelClaim" -}}
{{- if has .Values.model.source (list "pvc" "hfcache") }}
{{- required (printf "model.existingClaim is required when model.source is %s" .Values.model.source) .Values.model.existingClaim }}
{{- else if eq .Values.model.source "hub" }}
{{- printf "%s-model" (include "pagedserve.fullname" .) }}
{{- end }}
{{- end }}

{{/* The model argument of `pagedserve serve`: a path on the model volume, a Hub id (hfcache), or the bundled
model. */}}
{{- define "pagedserve.modelPath" -}}
{{- if eq .Values.model.source "bundled" }}
{{- .Values.model.name }}
{{- else if eq .Values.model.source "hfcache" }}
{{- required "model.name is required when model.source is hfcache" .Values.model.name }}
{{- else }}
{{- $name := required (printf "model.name is required when model.source is %s" .Values.model.source) .Values.model.name }}
{{- $path := printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" $name) }}
{{- if eq .Values.model.source "hub" }}
{{- /* One folder per revision: a new revision never overwrites files that running pods have mapped. */}}
{{- $path = printf "%s/%s" $path .Values.model.revision }}
{{- end }}
{{- $path }}
{{- end }}
{{- end }}

{{/* What the init container waits for: the model's path, or (hfcache) the Hub cache's snapshots of the repo. */}}
{{- define "pagedserve.modelWaitPath" -}}
{{- if eq .Values.model.source "hfcache" }}
{{- printf "%s/models--%s/snapshots" (trimSuffix "/" .Values.model.mountPath) (replace "/" "--" .Values.model.name) }}
{{- else }}
{{- include "pagedserve.modelPath" . }}
{{- end }}
{{- end }}

{{/* Name of the pre-stage Job, keyed by repo and revision so a new revision gets a new Job (Jobs are immutable). */}}
{{- define "pagedserve.prestageJobName" -}}
{{- $key := printf "%s@%s" .Values.model.name .Values.model.revision | sha256sum | trunc 8 }}
{{- printf "%s-prestage-%s" (include "pagedserve.fullname" . | trunc 43 | trimSuffix "-") $key }}
{{- end }}

{{- define "pagedserve.terminationGracePeriodSeconds" -}}
{{- $needed := add .Values.drain.preStopSleepSeconds .Values.engine.shutdownTimeout 10 }}
{{- if kindIs "invalid" .Values.drain.terminationGracePeriodSeconds }}
{{- $needed }}
{{- else if lt (int .Values.drain.terminationGracePeriodSeconds) (int (sub $needed 10)) }}
{{- fail (printf "drain.terminationGracePeriodSeconds (%v) must be at least drain.preStopSleepSeconds + engine.shutdownTimeout (%v)" .Values.drain.terminationGracePeriodSeconds (sub $needed 10)) }}
{{- else }}
{{- .Values.drain.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* PromQL label matchers that pick this release's scrape targets (labels added by the ServiceMonitor). */}}
{{- define "pagedserve.metricSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "pagedserve.fullname" . }}"
{{- end }}

{{/* Pod security context shared by every pod of the chart: restricted Pod Security Standard. */}}
{{- define "pagedserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
# Skip the recursive chown of a 100+ GB model volume on every mount.
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "pagedserve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
What the HPA / KEDA scale: the Deployment, or with multiNode the LeaderWorkerSet (it has the scale subresource;
its hpaPodSelector picks the leaders, the pods that serve the queue-depth metrics).
*/}}
{{- define "pagedserve.scaleTarget" -}}
{{- if .Values.multiNode.enabled -}}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
{{- else -}}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ include "pagedserve.fullname" . }}
{{- end }}

{{/*
CPU mode: --cpu-threads per rank, or "" to let the engine decide. engine.cpuThreads when set; else, without a CPU
limit (no cgroup quota for the engine to follow), the CPU request rounded down ("3500m" -> 3) over the pod's ranks,
unless the user already chose: --cpu-threads in extraArgs, PAGEDSERVE_CPU_THREADS or VLLM_CPU_OMP_THREADS_BIND in
extraEnv.
*/}}
{{- define "pagedserve.cpuThreads" -}}
{{- $userChose := false }}
{{- range .Values.engine.extraArgs }}
{{- if hasPrefix "--cpu-threads" (toString .) }}{{ $userChose = true }}{{ end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "PAGEDSERVE_CPU_THREADS" "VLLM_CPU_OMP_THREADS_BIND") }}{{ $userChose = true }}{{ end }}
{{- end }}
{{- if and (not .Values.gpu.enabled) (not $userChose) }}
{{- $ranks := max 1 (include "pagedserve.ranksPerPod" . | int) }}
{{- $resources := default dict .Values.resources }}
{{- if not (kindIs "invalid" .Values.engine.cpuThreads) }}
{{- .Values.engine.cpuThreads | int }}
{{- else if and (not (hasKey (default dict $resources.limits) "cpu")) (hasKey (default dict $resources.requests) "cpu") }}
{{- $cpu := toString $resources.requests.cpu }}
{{- $millis := 0 }}
{{- if hasSuffix "m" $cpu }}
{{- $millis = trimSuffix "m" $cpu | int }}
{{- else }}
{{- $millis = mulf (float64 $cpu) 1000 | int }}
{{- end }}
{{- max 1 (div $millis (mul 1000 $ranks)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Tensor-parallel ranks in one pod: the whole size, or its share per node of a multi-node group. */}}
{{- define "pagedserve.ranksPerPod" -}}
{{- $nodes := ternary (int .Values.multiNode.nodes) 1 .Values.multiNode.enabled }}
{{- div (int .Values.engine.tensorParallelSize) $nodes }}
{{- end }}

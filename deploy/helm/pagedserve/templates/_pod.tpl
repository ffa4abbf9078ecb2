{{- /*
The serving pod, shared by the Deployment (role "server") and a multi-node LeaderWorkerSet (role "leader": the API
server and the first ranks; role "worker": `pagedserve serve --headless` with the next ranks).
Call with (dict "root" $ "role" "server").
*/}}
{{- define "pagedserve.podTemplate" -}}
{{- $role := .role }}
{{- with .root }}
{{- $fullname := include "pagedserve.fullname" . }}
{{- $claim := include "pagedserve.modelClaim" . }}
{{- $modelPath := include "pagedserve.modelPath" . }}
{{- $engine := .Values.engine }}
{{- $nodes := ternary (int .Values.multiNode.nodes) 1 .Values.multiNode.enabled }}
{{- $gpusPerPod := include "pagedserve.ranksPerPod" . | int -}}
metadata:
  labels:
    {{- include "pagedserve.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: {{ ternary "worker" "server" (eq $role "worker") }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- if .Values.monitoring.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: "8000"
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "pagedserve.serviceAccountName" . }}
  # The server talks to no Kubernetes API.
  automountServiceAccountToken: false
  # A Service named like the app would inject PAGEDSERVE_PORT=tcp://... style variables.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ include "pagedserve.terminationGracePeriodSeconds" . }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- if and .Values.gpu.enabled .Values.gpu.runtimeClassName }}
  runtimeClassName: {{ .Values.gpu.runtimeClassName }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "pagedserve.podSecurityContext" . | nindent 4 }}
  {{- $nodeSelector := deepCopy .Values.nodeSelector }}
  {{- if .Values.gpu.enabled }}
  {{- $_ := set $nodeSelector "nvidia.com/gpu.present" "true" }}
  {{- with .Values.gpu.product }}
  {{- $_ := set $nodeSelector "nvidia.com/gpu.product" . }}
  {{- end }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := .Values.tolerations }}
  {{- if .Values.gpu.enabled }}
  {{- $tolerations = concat .Values.gpu.tolerations .Values.tolerations }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $affinity := deepCopy .Values.affinity }}
  {{- $antiTerm := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (merge (dict "app.kubernetes.io/component" "server") (include "pagedserve.selectorLabels" . | fromYaml))) }}
  {{- if eq .Values.podAntiAffinity "hard" }}
  {{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $antiTerm)) }}
  {{- else if eq .Values.podAntiAffinity "soft" }}
  {{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $antiTerm))) }}
  {{- end }}
  {{- with $affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $claim }}
  initContainers:
    # Waits until the weights are complete (the pre-stage Job writes the marker last), so the server
    # never loads a half-copied model.
    - name: wait-for-model
      image: {{ include "pagedserve.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["sh", "-c"]
      args:
        - |
          deadline=$(( $(date +%s) + WAIT_TIMEOUT_SECONDS ))
          complete() {
            [ -e "$MODEL_PATH" ] || return 1
            [ -n "$COMPLETE_MARKER" ] || return 0
            if [ -d "$MODEL_PATH" ]; then marker="$MODEL_PATH/$COMPLETE_MARKER"
            else marker="$(dirname "$MODEL_PATH")/$COMPLETE_MARKER"; fi
            [ -e "$marker" ] || return 1
            # hub: the marker must name this exact repo@revision.
            [ -z "$EXPECTED_MARKER" ] || [ "$(cat "$marker")" = "$EXPECTED_MARKER" ]
          }
          until complete; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
              echo "model at $MODEL_PATH not complete after ${WAIT_TIMEOUT_SECONDS}s (marker '$COMPLETE_MARKER')" >&2
              exit 1
            fi
            echo "waiting for a complete model at $MODEL_PATH"
            sleep 10
          done
          echo "model at $MODEL_PATH is complete"
      env:
        - name: MODEL_PATH
          value: {{ include "pagedserve.modelWaitPath" . | quote }}
        - name: COMPLETE_MARKER
          {{- /* A Hub cache has no marker: its snapshots folder existing is all the chart can know. */}}
          value: {{ ternary "" .Values.model.completeMarker (eq .Values.model.source "hfcache") | quote }}
        - name: WAIT_TIMEOUT_SECONDS
          value: {{ .Values.model.waitTimeoutSeconds | quote }}
        - name: EXPECTED_MARKER
          value: {{ ternary (printf "%s@%s" .Values.model.name .Values.model.revision) "" (eq .Values.model.source "hub") | quote }}
      resources:
        requests: {cpu: 10m, memory: 32Mi}
        limits: {memory: 64Mi}
      securityContext:
        {{- include "pagedserve.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - name: model
          mountPath: {{ .Values.model.mountPath }}
          readOnly: true
  {{- end }}
  containers:
    - name: {{ ternary "worker" "server" (eq $role "worker") }}
      image: {{ include "pagedserve.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["pagedserve", "serve"]
      args:
        {{- with $modelPath }}
        - {{ . | quote }}
        {{- end }}
        {{- if eq .Values.model.source "hfcache" }}
        - --download-dir
        - {{ .Values.model.mountPath | quote }}
        {{- with .Values.model.revision }}
        - --revision
        - {{ . | quote }}
        {{- end }}
        {{- end }}
        {{- if ne $role "server" }}
        {{- /* LWS sets LWS_LEADER_ADDRESS and LWS_WORKER_INDEX (0 on the leader) in every pod of a group. */}}
        - --nnodes
        - {{ $nodes | quote }}
        - --node-rank
        - "$(LWS_WORKER_INDEX)"
        - --master-addr
        - "$(LWS_LEADER_ADDRESS)"
        - --master-port
        - {{ .Values.multiNode.masterPort | quote }}
        {{- end }}
        {{- if eq $role "worker" }}
        {{- /* The ranks get the model's settings from rank 0: only the files, the size and the device matter. */}}
        - --headless
        - --tensor-parallel-size
        - {{ $engine.tensorParallelSize | quote }}
        {{- else }}
        - --host
        - "0.0.0.0"
        - --port
        - "8000"
        {{- with (default .Values.model.name .Values.model.servedModelName) }}
        - --served-model-name
        - {{ . | quote }}
        {{- end }}
        - --tensor-parallel-size
        - {{ $engine.tensorParallelSize | quote }}
        {{- if not (kindIs "invalid" $engine.maxModelLen) }}
        - --max-model-len
        - {{ $engine.maxModelLen | int64 | quote }}
        {{- end }}
        - --max-num-seqs
        - {{ $engine.maxNumSeqs | quote }}
        - --runner
        - {{ $engine.runner | quote }}
        - --dtype
        - {{ $engine.dtype | quote }}
        {{- with $engine.quantization }}
        - --quantization
        - {{ . | quote }}
        {{- end }}
        - --kv-cache-dtype
        - {{ $engine.kvCacheDtype | quote }}
        {{- if not (kindIs "invalid" $engine.kvCacheMemoryBytes) }}
        - --kv-cache-memory-bytes
        - {{ $engine.kvCacheMemoryBytes | int64 | quote }}
        {{- end }}
        {{- if .Values.gpu.enabled }}
        - --gpu-memory-utilization
        - {{ $engine.gpuMemoryUtilization | quote }}
        {{- end }}
        - {{ ternary "--enable-prefix-caching" "--no-enable-prefix-caching" $engine.enablePrefixCaching }}
        - --shutdown-timeout
        - {{ $engine.shutdownTimeout | quote }}
        - --max-request-body-bytes
        - {{ .Values.server.maxRequestBodyBytes | int64 | quote }}
        - --max-num-queued-reqs
        - {{ .Values.server.maxNumQueuedReqs | int64 | quote }}
        {{- with (include "pagedserve.cpuThreads" .) }}
        - --cpu-threads
        - {{ . | quote }}
        {{- end }}
        {{- with .Values.lora }}
        {{- if .enabled }}
        - --enable-lora
        - --max-loras
        - {{ .maxLoras | quote }}
        - --max-lora-rank
        - {{ .maxLoraRank | quote }}
        {{- if not (kindIs "invalid" .maxCpuLoras) }}
        - --max-cpu-loras
        - {{ .maxCpuLoras | quote }}
        {{- end }}
        {{- with .modules }}
        - --lora-modules
        {{- range . }}
        - {{ dict "name" .name "path" .path | toJson | quote }}
        {{- end }}
        {{- end }}
        {{- else if or .modules .runtimeUpdating }}
        {{- fail "lora.modules and lora.runtimeUpdating need lora.enabled" }}
        {{- end }}
        {{- end }}
        {{- range $engine.extraArgs }}
        - {{ . | quote }}
        {{- end }}
        {{- end }}
      {{- if ne $role "worker" }}
      ports:
        - name: http
          containerPort: 8000
          protocol: TCP
      {{- end }}
      env:
        - name: HOME
          value: /home/pagedserve
        - name: XDG_CACHE_HOME
          value: /cache
        - name: HF_HOME
          value: /cache/huggingface
        - name: TRITON_CACHE_DIR
          value: /cache/triton
        - name: TORCHINDUCTOR_CACHE_DIR
          value: /cache/torchinductor
        # The weights are local: never reach out to the hub from a serving pod.
        - name: HF_HUB_OFFLINE
          value: "1"
        - name: PYTHONDONTWRITEBYTECODE
          value: "1"
        {{- if .Values.apiKey.enabled }}
        - name: VLLM_API_KEY
          valueFrom:
            secretKeyRef:
              name: {{ required "apiKey.existingSecret is required when apiKey.enabled" .Values.apiKey.existingSecret }}
              key: {{ .Values.apiKey.secretKey }}
        {{- end }}
        {{- if and .Values.lora.enabled .Values.lora.runtimeUpdating }}
        - name: VLLM_ALLOW_RUNTIME_LORA_UPDATING
          value: "true"
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $resources := deepCopy .Values.resources }}
      {{- if .Values.gpu.enabled }}
      {{- /* The GPU count follows the tensor-parallel size (over the nodes); extended resources need request = limit. */}}
      {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $gpusPerPod) (default dict $resources.limits)) }}
      {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" $gpusPerPod) (default dict $resources.requests)) }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      {{- if ne $role "worker" }}
      startupProbe:
        httpGet: {path: /ready, port: http}
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
      readinessProbe:
        httpGet: {path: /ready, port: http}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
      livenessProbe:
        httpGet: {path: /health, port: http}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
      lifecycle:
        preStop:
          # Keep serving while endpoints and the Ingress drop the pod; SIGTERM then starts the drain.
          exec:
            command: ["sleep", "{{ .Values.drain.preStopSleepSeconds }}"]
      {{- end }}
      securityContext:
        {{- include "pagedserve.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - {name: scratch, mountPath: /tmp, subPath: tmp}
        - {name: scratch, mountPath: /home/pagedserve, subPath: home}
        - {name: scratch, mountPath: /cache, subPath: cache}
        - {name: dshm, mountPath: /dev/shm}
        {{- if $claim }}
        - name: model
          mountPath: {{ .Values.model.mountPath }}
          readOnly: true
        {{- end }}
        {{- if and .Values.lora.enabled .Values.lora.existingClaim }}
        - name: adapters
          mountPath: {{ .Values.lora.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    - name: scratch
      emptyDir:
        sizeLimit: {{ .Values.scratch.sizeLimit }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ .Values.shm.sizeLimit }}
    {{- if and .Values.lora.enabled .Values.lora.existingClaim }}
    - name: adapters
      persistentVolumeClaim:
        claimName: {{ .Values.lora.existingClaim }}
        readOnly: true
    {{- end }}
    {{- if $claim }}
    - name: model
      persistentVolumeClaim:
        claimName: {{ $claim }}
        readOnly: true
    {{- end }}
{{- end }}
{{- end }}

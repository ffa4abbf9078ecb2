{{/* Gateway API and Inference Extension helpers. */}}

{{/* "true" when the HTTPRoute is rendered: enabled and attached to at least one Gateway (parentRefs). */}}
{{- define "pagedserve.httpRouteRendered" -}}
{{- if and .Values.gateway.httpRoute.enabled .Values.gateway.httpRoute.parentRefs }}true{{ end }}
{{- end }}

{{/* Name of the endpoint picker's Deployment, Service, ServiceAccount and Role. */}}
{{- define "pagedserve.eppName" -}}
{{- printf "%s-epp" (include "pagedserve.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{- define "pagedserve.eppSelectorLabels" -}}
{{ include "pagedserve.selectorLabels" . }}
app.kubernetes.io/component: endpoint-picker
{{- end }}

{{- define "pagedserve.eppImage" -}}
{{- $image := .Values.inferenceExtension.endpointPicker.image }}
{{- if hasPrefix "@" $image.tag }}
{{- printf "%s%s" $image.repository $image.tag }}
{{- else }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}
{{- end }}

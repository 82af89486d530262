{{/* Full name: release-chart, cut to 63 characters. */}}
{{- define "ferry-writer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry-writer.serviceAccountName" -}}
{{- default (include "ferry-writer.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ferry-writer.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry-writer.labels" -}}
{{ include "ferry-writer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ferry-writer.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* Checks that cannot be said in values.schema.json. */}}
{{- define "ferry-writer.validate" -}}
{{- range .Values.rolloutRestart.targets -}}
{{- if not (has .namespace $.Values.targetNamespaces) -}}
{{- fail (printf "rolloutRestart.targets: %s %s/%s: namespace %q is not in targetNamespaces" .kind .namespace .name .namespace) -}}
{{- end -}}
{{- end -}}
{{- if .Values.networkPolicy.enabled -}}
{{- if or (empty .Values.networkPolicy.brokerCIDRs) (empty .Values.networkPolicy.apiServerCIDRs) -}}
{{- fail "networkPolicy.enabled needs networkPolicy.brokerCIDRs and networkPolicy.apiServerCIDRs (or set networkPolicy.enabled=false)" -}}
{{- end -}}
{{- end -}}
{{- range $kind := list "merge" "takeover" -}}
{{- range index $.Values.admissionPolicy (printf "%sTargets" $kind) -}}
{{- if not (has .namespace $.Values.targetNamespaces) -}}
{{- fail (printf "admissionPolicy.%sTargets: %s/%s: namespace %q is not in targetNamespaces" $kind .namespace .name .namespace) -}}
{{- end -}}
{{- if not (has $kind $.Values.writer.creationPolicies) -}}
{{- fail (printf "admissionPolicy.%sTargets names %s/%s, but writer.creationPolicies does not allow %s" $kind .namespace .name $kind) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.spiffe.mode "files") (empty .Values.spiffe.files.volume) -}}
{{- fail "spiffe.mode=files needs spiffe.files.volume" -}}
{{- end -}}
{{- end -}}

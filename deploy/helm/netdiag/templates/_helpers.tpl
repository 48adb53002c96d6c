{{- define "netdiag.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "netdiag.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "netdiag.labels" -}}
app.kubernetes.io/name: {{ include "netdiag.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* selector labels of one component: (dict "ctx" $ "component" "gateway") */}}
{{- define "netdiag.selector" -}}
app.kubernetes.io/name: {{ include "netdiag.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "netdiag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "netdiag.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* the gateway's ServiceAccount: its own (only a TokenReview grant) when it reviews Kubernetes tokens
and the chart creates ServiceAccounts; else the shared one, whose token it does not mount */}}
{{- define "netdiag.gatewayServiceAccountName" -}}
{{- if and .Values.serviceAccount.create .Values.gateway.auth.tokenReview.enabled -}}
{{ include "netdiag.fullname" . }}-gateway
{{- else -}}
{{ include "netdiag.serviceAccountName" . }}
{{- end -}}
{{- end -}}

{{- define "netdiag.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "netdiag.natsName" -}}
{{ include "netdiag.fullname" . }}-nats
{{- end -}}

{{- define "netdiag.natsUrl" -}}
{{- if .Values.nats.external.url -}}
{{ .Values.nats.external.url }}
{{- else -}}
nats://{{ include "netdiag.natsName" . }}.{{ .Release.Namespace }}.svc:4222
{{- end -}}
{{- end -}}

{{- define "netdiag.streamReplicas" -}}
{{- if not (kindIs "invalid" .Values.nats.streamReplicas) -}}
{{ .Values.nats.streamReplicas }}
{{- else if .Values.nats.external.url -}}
1
{{- else -}}
{{ min .Values.nats.replicas 5 }}
{{- end -}}
{{- end -}}

{{- define "netdiag.natsSecret" -}}
{{- default (printf "%s-nats-auth" (include "netdiag.fullname" .)) .Values.nats.auth.existingSecret -}}
{{- end -}}

{{- define "netdiag.natsAuth" -}}
{{- if and .Values.nats.auth.enabled (not .Values.nats.external.url) -}}true{{- end -}}
{{- end -}}

{{/* node agents log in through the NATS auth callout (`netdiag nats-auth`), each with its own node's
permissions, rather than as the shared `agent` user: nats.agentAuth=callout on the chart's own NATS */}}
{{- define "netdiag.natsCallout" -}}
{{- if and (include "netdiag.natsAuth" .) (eq .Values.nats.agentAuth "callout") -}}true{{- end -}}
{{- end -}}

{{/* the Secret with the callout issuer's nkey seed (key `issuer-seed`) */}}
{{- define "netdiag.natsIssuerSecret" -}}
{{- default (printf "%s-nats-issuer" (include "netdiag.fullname" .)) .Values.nats.authCallout.issuerExistingSecret -}}
{{- end -}}

{{/* the agents' ServiceAccount under auth callout: its token is what they present to NATS */}}
{{- define "netdiag.agentServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ include "netdiag.fullname" . }}-agent
{{- else -}}
{{ include "netdiag.serviceAccountName" . }}
{{- end -}}
{{- end -}}

{{/* the auth callout service's ServiceAccount (only a TokenReview grant) */}}
{{- define "netdiag.natsAuthServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ include "netdiag.fullname" . }}-nats-auth
{{- else -}}
{{ include "netdiag.serviceAccountName" . }}
{{- end -}}
{{- end -}}

{{/* Namespaces whose ConfigMaps detection reads, comma-separated: rbac.configMapNamespaces less those
the cluster lacks at install time (a Role cannot be made in a missing namespace). Offline (helm
template), where lookup finds nothing, not even kube-system: all of them. The Roles and the topology
stage's NETDIAG_CONFIGMAP_NAMESPACES both come from here, so they always agree. */}}
{{- define "netdiag.configMapNamespaces" -}}
{{- $online := lookup "v1" "Namespace" "" "kube-system" -}}
{{- $present := list -}}
{{- range .Values.rbac.configMapNamespaces -}}
{{- if or (not $online) (lookup "v1" "Namespace" "" .) -}}
{{- $present = append $present . -}}
{{- end -}}
{{- end -}}
{{- join "," $present -}}
{{- end -}}

{{/* environment every netdiag container shares: (dict "ctx" $ "user" "netdiag"|"agent"|"nats-auth"|"");
user "": no NATS user/password (the agent under auth callout presents its ServiceAccount token) */}}
{{- define "netdiag.env" -}}
{{- $ := .ctx -}}
- name: NETDIAG_NATS_URL
  value: {{ include "netdiag.natsUrl" $ | quote }}
- name: NETDIAG_STREAM_REPLICAS
  value: {{ include "netdiag.streamReplicas" $ | quote }}
- name: NETDIAG_RESULT_TTL_S
  value: {{ $.Values.resultTtlSeconds | quote }}
- name: NETDIAG_LOG_LEVEL
  value: {{ $.Values.logLevel | quote }}
{{- if $.Values.metrics.enabled }}
- name: NETDIAG_METRICS_PORT
  value: {{ $.Values.metrics.port | quote }}
{{- end }}
{{- if and (include "netdiag.natsAuth" $) .user }}
- name: NETDIAG_NATS_USER
  value: {{ .user }}
- name: NETDIAG_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "netdiag.natsSecret" $ }}
      key: {{ .user }}-password
{{- end }}
{{- if $.Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $.Values.tracing.otlpEndpoint | quote }}
{{- end }}
{{- end -}}

{{/* the restricted container security context: non-root, read-only root, no capabilities */}}
{{- define "netdiag.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "netdiag.metricsPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* the key the simulator signs `completed` events with and the gateway checks them by (shared/security.py) */}}
{{- define "netdiag.resultKeyEnv" -}}
- name: NETDIAG_RESULT_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.resultKey.existingSecret | default (printf "%s-result-key" (include "netdiag.fullname" .)) }}, key: result-key}
{{- end -}}

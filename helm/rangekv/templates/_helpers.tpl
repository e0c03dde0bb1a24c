{{/* Names ------------------------------------------------------------------- */}}

{{- define "rangekv.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* RELEASE-rangekv, or RELEASE if it already contains the chart name; short enough
     for "-metarange-NN" pod names and the 63-character label limit. */}}
{{- define "rangekv.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: (list $ "raftnode") */}}
{{- define "rangekv.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "rangekv.fullname" $root) (index . 1) -}}
{{- end -}}

{{- define "rangekv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rangekv.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rangekv.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels: (list $ "raftnode") */}}
{{- define "rangekv.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "rangekv.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "rangekv.labels" -}}
{{- $root := index . 0 -}}
{{ include "rangekv.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: rangekv
{{- end -}}

{{/* Stable DNS names --------------------------------------------------------- */}}

{{/* POD.SERVICE.NAMESPACE.svc.DOMAIN of ordinal i: (list $ "raftnode" i) */}}
{{- define "rangekv.podHost" -}}
{{- $root := index . 0 -}}
{{- $name := include "rangekv.component" (list $root (index . 1)) -}}
{{- printf "%s-%d.%s.%s.svc.%s" $name (int (index . 2)) $name $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{/* 1=HOST:PORT,2=... for the metarange voters */}}
{{- define "rangekv.metaPeers" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.metarange.replicas) -}}
{{- $peers = append $peers (printf "%d=%s:%d" (add $i 1) (include "rangekv.podHost" (list $ "metarange" $i)) (int $.Values.metarange.port)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "rangekv.metaAddrs" -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.metarange.replicas) -}}
{{- $addrs = append $addrs (printf "%s:%d" (include "rangekv.podHost" (list $ "metarange" $i)) (int $.Values.metarange.port)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{/* The first range's nodes: ids 1..bootstrapReplicas, by ordinal */}}
{{- define "rangekv.bootstrapIds" -}}
{{- $ids := list -}}
{{- range $i := until (int .Values.raftnode.bootstrapReplicas) -}}
{{- $ids = append $ids (toString (add $i 1)) -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{- define "rangekv.raftPeers" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.raftnode.bootstrapReplicas) -}}
{{- $peers = append $peers (printf "%d=%s:%d" (add $i 1) (include "rangekv.podHost" (list $ "raftnode" $i)) (int $.Values.raftnode.port)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "rangekv.gatewayAddr" -}}
{{- printf "%s.%s.svc.%s:%d" (include "rangekv.component" (list . "gateway")) .Release.Namespace .Values.clusterDomain (int .Values.gateway.service.port) -}}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------------ */}}

{{/* An env value: strings as they are, numbers and booleans as JSON (no 1e+06). */}}
{{- define "rangekv.envValue" -}}
{{- if kindIs "string" . -}}{{ . | quote }}{{- else -}}{{ toJson . | quote }}{{- end -}}
{{- end -}}

{{/* Environment shared by every server: (list $ component-values grpc-port) */}}
{{- define "rangekv.serverEnv" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
- name: RANGEKV_LISTEN_HOST
  value: "0.0.0.0"
- name: RANGEKV_LISTEN_PORT
  value: {{ index . 2 | toJson | quote }}
- name: RANGEKV_HEALTH_PORT
  value: {{ $root.Values.ports.health | toJson | quote }}
- name: RANGEKV_METRICS_HOST
  value: "0.0.0.0"
- name: RANGEKV_METRICS_PORT
  value: {{ $root.Values.ports.metrics | toJson | quote }}
- name: RANGEKV_LOG_LEVEL
  value: {{ $root.Values.logging.level | quote }}
- name: RANGEKV_LOG_FORMAT
  value: {{ $root.Values.logging.format | quote }}
{{- if $root.Values.otlpEndpoint }}
- name: RANGEKV_OTLP_ENDPOINT
  value: {{ $root.Values.otlpEndpoint | quote }}
{{- end }}
{{ include "rangekv.tlsEnv" $root }}
{{- range $k, $v := $c.settings }}
- name: {{ printf "RANGEKV_%s" ($k | upper | replace "-" "_") }}
  value: {{ include "rangekv.envValue" $v }}
{{- end }}
{{- end -}}

{{- define "rangekv.tlsEnv" -}}
{{- if .Values.tls.enabled -}}
- name: RANGEKV_CERTS_DIR
  value: {{ .Values.tls.mountPath | quote }}
{{- else -}}
- name: RANGEKV_INSECURE
  value: "true"
{{- end -}}
{{- end -}}

{{- define "rangekv.downwardEnv" -}}
- name: RANGEKV_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: RANGEKV_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "rangekv.ports" -}}
- name: grpc
  containerPort: {{ . | first }}
  protocol: TCP
- name: health
  containerPort: {{ index . 1 }}
  protocol: TCP
- name: metrics
  containerPort: {{ index . 2 }}
  protocol: TCP
{{- end -}}

{{/* gRPC probes on the plaintext health port, one service name each (see
     rangekv.common.server): startup, then liveness (never depends on peers) and
     readiness (serving, not draining). */}}
{{- define "rangekv.probes" -}}
startupProbe:
  grpc:
    port: {{ .Values.ports.health }}
    service: rangekv.startup
  periodSeconds: 2
  timeoutSeconds: 2
  failureThreshold: 150
readinessProbe:
  grpc:
    port: {{ .Values.ports.health }}
    service: rangekv.readiness
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ .Values.ports.health }}
    service: rangekv.liveness
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{- define "rangekv.tlsVolumeMounts" -}}
{{- if .Values.tls.enabled }}
- name: certs
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "rangekv.tlsVolumes" -}}
{{- if .Values.tls.enabled }}
- name: certs
  secret:
    secretName: {{ .Values.tls.nodeSecret }}
    defaultMode: 0400
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/* Scheduling: (list $ "raftnode" component-values) */}}
{{- define "rangekv.scheduling" -}}
{{- $root := index . 0 -}}
{{- $c := index . 2 -}}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if $c.affinity }}
  {{- toYaml $c.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "rangekv.selectorLabels" (list $root (index . 1)) | nindent 14 }}
{{- end }}
topologySpreadConstraints:
{{- if $c.topologySpreadConstraints }}
  {{- toYaml $c.topologySpreadConstraints | nindent 2 }}
{{- else }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "rangekv.selectorLabels" (list $root (index . 1)) | nindent 8 }}
{{- end }}
{{- end -}}

{{- define "rangekv.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $root.Values.ports.metrics | toJson | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with $c.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

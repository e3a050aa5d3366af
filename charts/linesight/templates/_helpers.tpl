{{/* Names, labels and the pod shape every LineSight service shares. */}}

{{- define "linesight.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "linesight.fullname" -}}
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

{{- define "linesight.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels. Call with (dict "root" $ "component" "inference"). */}}
{{- define "linesight.labels" -}}
helm.sh/chart: {{ include "linesight.chart" .root }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: linesight
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "linesight.selectorLabels" . }}
linesight.io/plant: {{ .root.Values.plant | quote }}
linesight.io/line: {{ .root.Values.line | quote }}
{{- end -}}

{{- define "linesight.selectorLabels" -}}
app.kubernetes.io/name: {{ include "linesight.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "linesight.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "linesight.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "linesight.secretName" -}}
{{- default (printf "%s-secrets" (include "linesight.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Secret with one NATS password per user (key = user name); see templates/nats-users.yaml. */}}
{{- define "linesight.natsUsersSecret" -}}
{{- default (printf "%s-nats-users" (include "linesight.fullname" .)) .Values.nats.auth.existingSecret -}}
{{- end -}}

{{- define "linesight.natsUrl" -}}
{{- $url := ternary (printf "nats://%s-nats:4222" (include "linesight.fullname" .)) .Values.nats.url .Values.nats.leaf.enabled -}}
{{- if .Values.nats.tls.enabled -}}
{{- regexReplaceAll "^nats://" $url "tls://" -}}
{{- else -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* A user's permissions (files/nats-permissions.json) in NATS config syntax; quoted strings, since
toJson would escape `>` as \u003e, which the NATS config parser does not read. */}}
{{- define "linesight.natsPermissions" -}}
{{- $dirs := list -}}
{{- range $direction, $rules := . -}}
{{- $kinds := list -}}
{{- range $kind, $subjects := $rules -}}
{{- $quoted := list -}}
{{- range $subjects }}{{ $quoted = append $quoted (quote .) }}{{ end -}}
{{- $kinds = append $kinds (printf "%s: [%s]" $kind (join ", " $quoted)) -}}
{{- end -}}
{{- $dirs = append $dirs (printf "%s: {%s}" $direction (join ", " $kinds)) -}}
{{- end -}}
{{- printf "{%s}" (join ", " $dirs) -}}
{{- end -}}

{{/* Image of a service: its own override, else <registry>/linesight-<svc>:<tag>. */}}
{{- define "linesight.image" -}}
{{- $svc := index .root.Values .component -}}
{{- if $svc.image -}}
{{- $svc.image -}}
{{- else -}}
{{- printf "%s/linesight-%s:%s" .root.Values.image.registry .component (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Minimum replicas a service runs with (HPA minimum when autoscaled). */}}
{{- define "linesight.minReplicas" -}}
{{- $svc := index .root.Values .component -}}
{{- if and (hasKey $svc "hpa") $svc.hpa.enabled -}}
{{- $svc.hpa.minReplicas -}}
{{- else -}}
{{- .replicas | default $svc.replicas -}}
{{- end -}}
{{- end -}}

{{/*
The container every service runs: hardened, settings from the ConfigMap and Secret, probes on
/healthz and /readyz, writable scratch only in emptyDirs.
Call with (dict "root" $ "component" "inference" "station" "station1" "command" list); optional
"extraEnv" (list of EnvVar, before `<svc>.env` so that one wins) and "extraMounts".
*/}}
{{- define "linesight.container" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values .component -}}
- name: {{ .component }}
  image: {{ include "linesight.image" . | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: {{ toJson (default (list "python" "-m" (printf "linesight.%s" .component)) .command) }}
  {{- with .args }}
  args: {{ toJson . }}
  {{- end }}
  envFrom:
    - configMapRef:
        name: {{ include "linesight.fullname" $root }}-settings
    - secretRef:
        name: {{ include "linesight.secretName" $root }}
  env:
    # Bind on all interfaces so the kubelet's probes and peers' Services reach the pod.
    - name: LINESIGHT_LISTEN_HOST
      value: "0.0.0.0"
    {{- if .station }}
    - name: LINESIGHT_STATION
      value: {{ .station | quote }}
    {{- else if .stationFromNode }}
    - name: LINESIGHT_STATION
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    {{- end }}
    {{- with .profilePath }}
    - name: LINESIGHT_CAPTURE_PROFILE
      value: {{ . | quote }}
    {{- end }}
    # Its own NATS user: the server lets it publish only its own events (docs/messaging.md).
    - name: LINESIGHT_NATS_USER
      value: {{ .component | quote }}
    - name: LINESIGHT_NATS_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ include "linesight.natsUsersSecret" $root }}
          key: {{ .component }}
    {{- if $root.Values.nats.tls.enabled }}
    - name: LINESIGHT_NATS_TLS_CA_FILE
      value: /etc/linesight/nats-ca/ca.crt
    {{- end }}
    # Tokens: the labeling service signs them (private key); every other service only verifies.
    {{- if eq .component "labeling" }}
    - name: LINESIGHT_AUTH_SIGNING_KEY_FILE
      value: /etc/linesight/auth/signing-key.pem
    {{- else }}
    - name: LINESIGHT_AUTH_VERIFY_KEY_FILES
      value: '["/etc/linesight/auth/signing-key.pub.pem"]'
    {{- end }}
    - name: OTEL_SERVICE_NAME
      value: "linesight-{{ .component }}"
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: OTEL_RESOURCE_ATTRIBUTES
      value: {{ printf "k8s.pod.name=$(POD_NAME),linesight.plant=%s,linesight.line=%s%s" $root.Values.plant $root.Values.line (ternary (printf ",%s" $root.Values.otel.resourceAttributes) "" (ne $root.Values.otel.resourceAttributes "")) | quote }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- range $k, $v := $svc.env }}
    - name: {{ $k }}
      value: {{ $v | quote }}
    {{- end }}
  {{- if not .job }}
  ports:
    - name: grpc
      containerPort: {{ $svc.grpcPort }}
      protocol: TCP
    - name: http
      containerPort: {{ $svc.httpPort }}
      protocol: TCP
  startupProbe:
    httpGet: {path: /healthz, port: http}
    {{- toYaml $root.Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet: {path: /healthz, port: http}
    {{- toYaml $root.Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet: {path: /readyz, port: http}
    {{- toYaml $root.Values.probes.readiness | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml (default $svc.resources .resources) | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: state
      mountPath: /var/lib/linesight
    - name: auth-keys
      mountPath: /etc/linesight/auth
      readOnly: true
    {{- if $root.Values.nats.tls.enabled }}
    - name: nats-ca
      mountPath: /etc/linesight/nats-ca
      readOnly: true
    {{- end }}
    {{- with .extraMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Pod spec fields shared by Deployments, DaemonSets and Jobs (everything but containers). */}}
{{- define "linesight.podCommon" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values .component -}}
serviceAccountName: {{ default (include "linesight.serviceAccountName" $root) .serviceAccountName }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $svc.nodeSelector .nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $svc.tolerations .tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $svc.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  - name: auth-keys
    secret:
      secretName: {{ required "auth.signingKeySecret: name the Secret holding signing-key.pem and signing-key.pub.pem (see values.yaml)" $root.Values.auth.signingKeySecret }}
      {{- if ne .component "labeling" }}
      items:
        - {key: signing-key.pub.pem, path: signing-key.pub.pem}
      {{- end }}
  {{- if $root.Values.nats.tls.enabled }}
  - name: nats-ca
    secret:
      secretName: {{ required "nats.tls.caSecret: name the Secret with ca.crt of the NATS server's CA" $root.Values.nats.tls.caSecret }}
      items:
        - {key: ca.crt, path: ca.crt}
  {{- end }}
  - name: state
    {{- if .stateVolume }}
    {{- toYaml .stateVolume | nindent 4 }}
    {{- else }}
    emptyDir:
      sizeLimit: 2Gi
    {{- end }}
  {{- with .extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Pod template annotations: roll pods when settings change. */}}
{{- define "linesight.podAnnotations" -}}
checksum/settings: {{ include (print .Template.BasePath "/settings.yaml") . | sha256sum }}
{{- end -}}

{{/*
A long-running service: Deployment + Service (+ HPA + PDB).
Call with (dict "root" $ "component" "labeling"); optional "sidecars" (list of containers),
"extraServicePorts", and what linesight.container / linesight.podCommon take.
*/}}
{{- define "linesight.service" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values .component -}}
{{- $name := printf "%s-%s" (include "linesight.fullname" $root) .component -}}
{{- $autoscaled := and (hasKey $svc "hpa") $svc.hpa.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "linesight.labels" . | nindent 4 }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ .replicas | default $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "linesight.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}
  template:
    metadata:
      labels:
        {{- include "linesight.labels" . | nindent 8 }}
      annotations:
        {{- include "linesight.podAnnotations" $root | nindent 8 }}
    spec:
      {{- include "linesight.podCommon" . | nindent 6 }}
      terminationGracePeriodSeconds: 30
      containers:
        {{- include "linesight.container" . | nindent 8 }}
        {{- with .sidecars }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "linesight.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "linesight.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $svc.grpcPort }}
      targetPort: grpc
      appProtocol: grpc
    - name: http
      port: {{ $svc.httpPort }}
      targetPort: http
      appProtocol: http
    {{- with .extraServicePorts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- if $autoscaled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- include "linesight.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $svc.hpa.minReplicas }}
  maxReplicas: {{ $svc.hpa.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.hpa.targetCPUUtilizationPercentage }}
  behavior:
    # Frames arrive in bursts at shift start; scale up fast, down slowly.
    scaleDown:
      stabilizationWindowSeconds: 300
{{- end }}
{{- if and $root.Values.podDisruptionBudget.enabled (ge (int (include "linesight.minReplicas" .)) 2) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "linesight.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $root.Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "linesight.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
Triton as a sidecar of every inference pod (`triton.enabled`). The inference service writes the
model repository (services/linesight/inference/app/triton_repo.py) into an emptyDir both containers mount
and loads each model version through Triton's explicit model control on 127.0.0.1; `triton_shm`
puts the input tensors into POSIX shared memory, which is why /dev/shm is one memory-backed
emptyDir mounted in both. Both containers run as the same uid: the repository is written by
inference and read by Triton, and the shared-memory regions are created 0600.
See docs/deployment.md, "Triton".
*/}}

{{/* Refuse values that cannot work, with the reason. Called by inference.yaml. */}}
{{- define "linesight.triton.validate" -}}
{{- $t := .Values.triton -}}
{{- if $t.enabled -}}
{{- if not .Values.inference.enabled -}}
{{- fail "triton.enabled needs inference.enabled: Triton runs as a sidecar of the inference pods" -}}
{{- end -}}
{{- range $gone := list "modelRepository" "modelControlMode" "replicas" -}}
{{- if hasKey $t $gone -}}
{{- fail (printf "triton.%s is no longer a setting: Triton is a sidecar of the inference pods and serves the repository the inference service writes (docs/deployment.md, Triton)" $gone) -}}
{{- end -}}
{{- end -}}
{{- if not (has (toString $t.backend) (list "triton_grpc" "triton_http" "triton_shm")) -}}
{{- fail (printf "triton.backend must be triton_grpc, triton_http or triton_shm, not %q" (toString $t.backend)) -}}
{{- end -}}
{{- if not (has (toString $t.downPolicy) (list "failover" "stop")) -}}
{{- fail (printf "triton.downPolicy must be failover or stop, not %q" (toString $t.downPolicy)) -}}
{{- end -}}
{{- $ports := list (int $t.httpPort) (int $t.grpcPort) (int $t.metricsPort) (int .Values.inference.grpcPort) (int .Values.inference.httpPort) -}}
{{- if ne (len (uniq $ports)) (len $ports) -}}
{{- fail "triton.httpPort, triton.grpcPort, triton.metricsPort and inference's ports share the pod's network: they must all differ" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `curl` of one of Triton's health endpoints on the pod's loopback, for an exec probe. */}}
{{- define "linesight.triton.probe" -}}
exec:
  command: [curl, -fsS, -o, /dev/null, -m, {{ .probe.timeoutSeconds | default 3 | toString | quote }}, {{ printf "http://127.0.0.1:%d/v2/health/%s" (int .port) .endpoint | quote }}]
{{ toYaml .probe }}
{{- end -}}

{{/* The Triton container (a YAML mapping). */}}
{{- define "linesight.triton.container" -}}
{{- $root := . -}}
{{- $t := .Values.triton -}}
{{- $res := deepCopy $t.resources -}}
{{- if gt (int $t.gpus) 0 -}}
{{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int $t.gpus)) (default (dict) $res.limits)) -}}
{{- end -}}
name: triton
image: {{ include "linesight.image" (dict "root" $root "component" "triton") | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: [tritonserver]
args:
  - --model-repository={{ $t.repository.path }}
  - --model-control-mode=explicit
  {{- /* Ready = the server answers. A model that failed to load is the inference service's to
  report (and to fail over from), not a reason to take the whole pod out of its Service. */}}
  - --strict-readiness=false
  {{- /* Inference and model control only on the pod's loopback: model control can load code. */}}
  - --http-address=127.0.0.1
  - --http-port={{ $t.httpPort }}
  - --grpc-address=127.0.0.1
  - --grpc-port={{ $t.grpcPort }}
  - --metrics-address=0.0.0.0
  - --metrics-port={{ $t.metricsPort }}
  - --exit-timeout-secs={{ $t.exitTimeoutSeconds }}
  - --log-verbose=0
  {{- range $t.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - {name: HOME, value: /tmp}
  {{- if eq (int $t.gpus) 0 }}
  {{- /* The NGC image sets NVIDIA_VISIBLE_DEVICES=all: without a GPU request the container
  would still see every GPU of a node whose default runtime is nvidia. */}}
  - {name: NVIDIA_VISIBLE_DEVICES, value: void}
  {{- end }}
ports:
  - {name: triton-metrics, containerPort: {{ $t.metricsPort }}, protocol: TCP}
startupProbe:
  {{- include "linesight.triton.probe" (dict "port" $t.httpPort "endpoint" "live" "probe" .Values.probes.startup) | nindent 2 }}
livenessProbe:
  {{- include "linesight.triton.probe" (dict "port" $t.httpPort "endpoint" "live" "probe" .Values.probes.liveness) | nindent 2 }}
readinessProbe:
  {{- include "linesight.triton.probe" (dict "port" $t.httpPort "endpoint" "ready" "probe" .Values.probes.readiness) | nindent 2 }}
{{- if gt (int $t.preStopSleepSeconds) 0 }}
lifecycle:
  {{- /* Both containers get SIGTERM together; Triton stays a little longer so the batches the
  inference service still has in flight while it drains are answered. */}}
  preStop:
    exec:
      command: [sleep, {{ $t.preStopSleepSeconds | toString | quote }}]
{{- end }}
resources:
  {{- toYaml $res | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - {name: triton-tmp, mountPath: /tmp}
  - {name: triton-models, mountPath: {{ $t.repository.path }}}
  - {name: dshm, mountPath: /dev/shm}
{{- end -}}

{{/*
What triton.enabled adds to the inference Deployment, as keys of linesight.service's context:
env and mounts for the inference container, the volumes, the sidecar, the metrics port on the
Service, and the scheduling constraints (the pod goes where the sidecar can run).
*/}}
{{- define "linesight.triton.podParts" -}}
{{- $t := .Values.triton -}}
{{- $inf := .Values.inference -}}
extraEnv:
  {{- /* Names read by services/linesight/common/settings.py (LINESIGHT_TRITON_URL) and
  services/linesight/inference/app/config.py (LINESIGHT_INFERENCE_*); tests/unit/deploy checks them by
  running the service's config_for. The URL is given twice: InferenceConfig.from_env validates
  a triton_* backend before LINESIGHT_TRITON_URL is merged in, so it needs its own. */}}
  - {name: LINESIGHT_TRITON_URL, value: {{ printf "127.0.0.1:%d" (int $t.grpcPort) | quote }}}
  - {name: LINESIGHT_INFERENCE_TRITON_URL, value: {{ printf "127.0.0.1:%d" (int $t.grpcPort) | quote }}}
  - {name: LINESIGHT_INFERENCE_BACKEND, value: {{ $t.backend | quote }}}
  - {name: LINESIGHT_INFERENCE_TRITON_HTTP_URL, value: {{ printf "127.0.0.1:%d" (int $t.httpPort) | quote }}}
  - {name: LINESIGHT_INFERENCE_TRITON_MODEL_REPOSITORY, value: {{ $t.repository.path | quote }}}
  - {name: LINESIGHT_INFERENCE_TRITON_DOWN_POLICY, value: {{ $t.downPolicy | quote }}}
extraMounts:
  - {name: triton-models, mountPath: {{ $t.repository.path }}}
  - {name: dshm, mountPath: /dev/shm}
extraVolumes:
  - name: triton-models
    emptyDir: {sizeLimit: {{ $t.repository.sizeLimit }}}
  - name: dshm
    emptyDir: {medium: Memory, sizeLimit: {{ $t.shmSizeLimit }}}
  - name: triton-tmp
    emptyDir: {sizeLimit: 1Gi}
sidecars:
  - {{- include "linesight.triton.container" . | nindent 4 }}
extraServicePorts:
  - {name: triton-metrics, port: {{ $t.metricsPort }}, targetPort: triton-metrics, appProtocol: http}
{{- with (merge (deepCopy (default (dict) $t.nodeSelector)) (default (dict) $inf.nodeSelector)) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (concat (default (list) $inf.tolerations) (default (list) $t.tolerations)) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

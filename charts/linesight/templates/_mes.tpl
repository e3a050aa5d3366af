{{/*
The MES endpoints as JSON (LINESIGHT_MES_ENDPOINTS): `mes.endpoints`, or the single `mes.endpoint`
as a webhook when OPC UA is added to it, plus the OPC UA server when `mes.opcua.enabled`.
"[]" when there is nothing beyond `mes.endpoint` (the service then uses LINESIGHT_MES_ENDPOINT).
*/}}
{{- define "linesight.mesEndpoints" -}}
{{- $mes := .Values.mes -}}
{{- $endpoints := list -}}
{{- range $mes.endpoints }}{{ $endpoints = append $endpoints . }}{{ end -}}
{{- if $mes.opcua.enabled -}}
{{- if and (not $endpoints) $mes.endpoint -}}
{{- $endpoints = append $endpoints (dict "kind" "webhook" "name" "mes" "url" $mes.endpoint) -}}
{{- end -}}
{{- $opcua := dict "kind" "opcua" "name" "opcua" "host" "0.0.0.0" "port" (int $mes.opcua.port) "stations" ($mes.opcua.stations | default list) "security" $mes.opcua.security -}}
{{- if ne $mes.opcua.security "None" -}}
{{- $_ := set $opcua "certificate" "/etc/linesight/mes-opcua/certificate.pem" -}}
{{- $_ := set $opcua "private_key" "/etc/linesight/mes-opcua/private-key.pem" -}}
{{- end -}}
{{- $endpoints = append $endpoints $opcua -}}
{{- end -}}
{{- toJson $endpoints -}}
{{- end -}}

{{/* The MES pod's extra volumes and mounts: endpoint secret files, the OPC UA certificate. */}}
{{- define "linesight.mesVolumes" -}}
{{- $mes := .Values.mes -}}
volumes:
  {{- with $mes.secretFiles }}
  - name: mes-secrets
    secret:
      secretName: {{ . }}
  {{- end }}
  {{- if and $mes.opcua.enabled (ne $mes.opcua.security "None") }}
  - name: mes-opcua
    secret:
      secretName: {{ required "mes.opcua.certificateSecret: name the Secret with certificate.pem and private-key.pem (or set mes.opcua.security: None)" $mes.opcua.certificateSecret }}
      items:
        - {key: certificate.pem, path: certificate.pem}
        - {key: private-key.pem, path: private-key.pem}
  {{- end }}
mounts:
  {{- if $mes.secretFiles }}
  - name: mes-secrets
    mountPath: /etc/linesight/mes-secrets
    readOnly: true
  {{- end }}
  {{- if and $mes.opcua.enabled (ne $mes.opcua.security "None") }}
  - name: mes-opcua
    mountPath: /etc/linesight/mes-opcua
    readOnly: true
  {{- end }}
{{- end -}}

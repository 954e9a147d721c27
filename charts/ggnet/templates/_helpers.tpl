{{- define "ggnet.labels" -}}
app.kubernetes.io/name: ggnet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ggnet.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{ printf "%s/%s:%s" $root.Values.image.registry $name (default $root.Chart.AppVersion $root.Values.image.tag) }}
{{- end -}}

{{- define "ggnet.fullname" -}}
{{- printf "%s-%s" .Release.Name "ggnet" | trunc 50 | trimSuffix "-" -}}
{{- end -}}

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

{{- /* The one namespace GGnet serves (watchNamespaces), or "" for all. The
      binaries watch one namespace or all (--namespace). */ -}}
{{- define "ggnet.watchNamespace" -}}
{{- $ns := .Values.watchNamespaces | default list -}}
{{- if gt (len $ns) 1 -}}
{{- fail (printf "watchNamespaces %v: the agents watch one namespace or all (--namespace); give at most one" $ns) -}}
{{- end -}}
{{- first $ns | default "" -}}
{{- end -}}

{{/* Names and labels. */}}
{{- define "fc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "fc.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "fc.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fc.labels" -}}
{{ include "fc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "fc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fc.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where rule files are mounted, in load order. */}}
{{- define "fc.rulePaths" -}}
{{- if .Values.rules.shipped }}
- /opt/falco-correlator/rules
{{- end }}
{{- if .Values.rules.overrides }}
- /etc/falco-correlator/rules/overrides
{{- end }}
{{- range $index, $name := .Values.rules.extraConfigMaps }}
- /etc/falco-correlator/rules/extra-{{ $index }}
{{- end }}
{{- end -}}

{{/* Where shadow rule files are mounted, in load order (empty: no shadow rules). */}}
{{- define "fc.shadowRulePaths" -}}
{{- $shadow := default (dict) .Values.rules.shadow -}}
{{- if $shadow.shipped }}
- /opt/falco-correlator/rules
{{- end }}
{{- if $shadow.overrides }}
- /etc/falco-correlator/shadow-rules/overrides
{{- end }}
{{- range $index, $name := (default (list) $shadow.extraConfigMaps) }}
- /etc/falco-correlator/shadow-rules/extra-{{ $index }}
{{- end }}
{{- end -}}

{{/* The worker configuration: `config` with the keys the pod layout decides. */}}
{{- define "fc.workerConfig" -}}
{{- $config := deepCopy .Values.config -}}
{{- $rules := include "fc.rulePaths" . | fromYamlArray -}}
{{- if not $rules -}}
{{- fail "no rules: set rules.shipped, rules.overrides or rules.extraConfigMaps" -}}
{{- end -}}
{{- $pod := dict "rules" $rules "data_dir" "/var/lib/falco-correlator" "web_port" (int .Values.service.port) "log_format" "json" -}}
{{- $shadowRules := include "fc.shadowRulePaths" . | fromYamlArray -}}
{{- if $shadowRules -}}
{{- $_ := set $pod "shadow_rules" $shadowRules -}}
{{- end -}}
{{- $_ := set $config "app" (merge $pod (default (dict) $config.app)) -}}
{{- $kafka := default (dict) $config.kafka -}}
{{- with .Values.kafkaTls.secretName -}}
{{- $_ := set $kafka "ssl_cafile" (printf "/etc/falco-correlator/kafka-tls/%s" $.Values.kafkaTls.caKey) -}}
{{- if $.Values.kafkaTls.certKey -}}
{{- $_ := set $kafka "ssl_certfile" (printf "/etc/falco-correlator/kafka-tls/%s" $.Values.kafkaTls.certKey) -}}
{{- $_ := set $kafka "ssl_keyfile" (printf "/etc/falco-correlator/kafka-tls/%s" $.Values.kafkaTls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The TCP port of an http(s) URL, or nothing when the value is not a literal URL. */}}
{{- define "fc.urlPort" -}}
{{- if and (kindIs "string" .) (regexMatch "^https?://" .) -}}
{{- $host := (urlParse .).host -}}
{{- if regexMatch ":[0-9]+$" $host -}}
{{- regexFind "[0-9]+$" $host -}}
{{- else if hasPrefix "https://" . -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Ports of the notifiers and enrichers configured (YAML list of integers). */}}
{{- define "fc.httpPorts" -}}
{{- $ports := list -}}
{{- range (default (list) .Values.config.notifiers) -}}
{{- if eq .type "slack" -}}
{{- $port := include "fc.urlPort" (dig "slack" "base_url" "https://slack.com/api/" .) -}}
{{- $ports = append $ports (default "443" $port) -}}
{{- end -}}
{{- $section := get . .type -}}
{{- if kindIs "map" $section -}}
{{- $port := include "fc.urlPort" (get $section "url") -}}
{{- if $port }}{{ $ports = append $ports $port }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $enrichment := .Values.config.enrichment -}}
{{- $enrichers := list -}}
{{- if kindIs "slice" $enrichment }}{{ $enrichers = $enrichment }}{{ else if kindIs "map" $enrichment }}{{ $enrichers = default (list) $enrichment.enrichers }}{{ end -}}
{{- range $enrichers -}}
{{- $section := get . .type -}}
{{- if kindIs "map" $section -}}
{{- $port := include "fc.urlPort" (get $section "url") -}}
{{- if $port }}{{ $ports = append $ports $port }}{{ end -}}
{{- range (default (list) (get $section "kube_hunter")) -}}
{{- $port := include "fc.urlPort" . -}}
{{- if $port }}{{ $ports = append $ports $port }}{{ end -}}
{{- end -}}
{{- range (default (list) (get $section "kube_bench")) -}}
{{- $port := include "fc.urlPort" (get . "source") -}}
{{- if $port }}{{ $ports = append $ports $port }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range ($ports | uniq | sortAlpha) }}
- {{ . }}
{{- end -}}
{{- end -}}

{{/* Ports of config.kafka.bootstrap_servers (YAML list of integers). */}}
{{- define "fc.kafkaPorts" -}}
{{- $ports := list -}}
{{- range (splitList "," (toString .Values.config.kafka.bootstrap_servers)) -}}
{{- $server := trim . | trimPrefix "PLAINTEXT://" | trimPrefix "SSL://" | trimPrefix "SASL_SSL://" | trimPrefix "SASL_PLAINTEXT://" -}}
{{- if regexMatch ":[0-9]+$" $server -}}
{{- $ports = append $ports (regexFind "[0-9]+$" $server) -}}
{{- else -}}
{{- $ports = append $ports "9092" -}}
{{- end -}}
{{- end -}}
{{- range ($ports | uniq | sortAlpha) }}
- {{ . }}
{{- end -}}
{{- end -}}

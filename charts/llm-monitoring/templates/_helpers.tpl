{{/*
Helpers of the llm-monitoring chart. Names and labels are computed here and nowhere else.
*/}}

{{/*
Usage: {{ include "llm-monitoring.name" . }}
The chart name (nameOverride wins), at most 63 characters.
*/}}
{{- define "llm-monitoring.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.fullname" . }}
The full name prefix of every object: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>"; truncated to 63 characters, no trailing "-".
*/}}
{{- define "llm-monitoring.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "llm-monitoring.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.chart" . }}
The helm.sh/chart label value: "<chart>-<version>".
*/}}
{{- define "llm-monitoring.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.labels" . }}
Labels every object carries: the recommended app.kubernetes.io set plus commonLabels. No
selectorLabels: the chart renders no workload or Service to select.
*/}}
{{- define "llm-monitoring.labels" -}}
helm.sh/chart: {{ include "llm-monitoring.chart" . }}
app.kubernetes.io/name: {{ include "llm-monitoring.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-serving
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.component.labels" (dict "ctx" $ "component" "dashboards") }}
The chart labels plus app.kubernetes.io/component: every object of this chart is one component.
*/}}
{{- define "llm-monitoring.component.labels" -}}
{{ include "llm-monitoring.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.prometheus.labels" (dict "ctx" $ "component" "ray-head") }}
Labels of the objects the Prometheus Operator selects (PodMonitors, PrometheusRule): the component
labels plus prometheus.selectorLabels (e.g. `release: kube-prometheus-stack`).
*/}}
{{- define "llm-monitoring.prometheus.labels" -}}
{{ include "llm-monitoring.component.labels" . }}
{{- with .ctx.Values.prometheus.selectorLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ if include "llm-monitoring.capabilities.has" (dict "ctx" $ "api" "monitoring.coreos.com/v1") }}
Whether an API group/version is served: what Helm discovered, or listed in assumeApiVersions (for
offline rendering). Prints "true" or nothing.
*/}}
{{- define "llm-monitoring.capabilities.has" -}}
{{- if or (.ctx.Capabilities.APIVersions.Has .api) (has .api .ctx.Values.assumeApiVersions) -}}
true
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.podMonitor.name" (dict "ctx" $ "nodeType" "head") }}
Name of the PodMonitor of one Ray node type ("head" or "worker").
*/}}
{{- define "llm-monitoring.podMonitor.name" -}}
{{- printf "%s-ray-%s" (include "llm-monitoring.fullname" .ctx | trunc 52 | trimSuffix "-") .nodeType -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.podMonitor" (dict "ctx" $ "nodeType" "worker") }}
The PodMonitor of one Ray node type. KubeRay labels every Ray pod with `ray.io/node-type` (head or
worker) and `ray.io/cluster`, and gives its Ray container the port `metrics` (8080), where Ray's
metrics agent exports every metric of the processes on that pod. The relabelling copies
`ray.io/cluster` to `ray_io_cluster` (KubeRay's and Ray's dashboards filter on it).
*/}}
{{- define "llm-monitoring.podMonitor" -}}
{{- $values := .ctx.Values.podMonitors -}}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ include "llm-monitoring.podMonitor.name" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "llm-monitoring.prometheus.labels" (dict "ctx" .ctx "component" (printf "ray-%s" .nodeType)) | nindent 4 }}
spec:
  {{- if $values.namespaceSelector.matchNames }}
  namespaceSelector:
    matchNames:
      {{- toYaml $values.namespaceSelector.matchNames | nindent 6 }}
  {{- else if $values.namespaceSelector.any }}
  namespaceSelector:
    any: true
  {{- end }}
  selector:
    matchLabels:
      {{- $matchLabels := merge (dict "ray.io/node-type" .nodeType) (deepCopy $values.matchLabels) }}
      {{- with $values.rayCluster }}
      {{- $_ := set $matchLabels "ray.io/cluster" . }}
      {{- end }}
      {{- toYaml $matchLabels | nindent 6 }}
  {{- with $values.sampleLimit }}
  sampleLimit: {{ . }}
  {{- end }}
  podMetricsEndpoints:
    - port: metrics
      path: /metrics
      interval: {{ $values.interval }}
      scrapeTimeout: {{ $values.scrapeTimeout }}
      relabelings:
        - action: replace
          sourceLabels: [__meta_kubernetes_pod_label_ray_io_cluster]
          targetLabel: ray_io_cluster
        {{- with $values.relabelings }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $values.metricRelabelings }}
      metricRelabelings:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.rules.name" . }}
Name of the PrometheusRule.
*/}}
{{- define "llm-monitoring.rules.name" -}}
{{- include "llm-monitoring.fullname" . -}}
{{- end -}}

{{/*
Usage: DCGM_FI_DEV_GPU_UTIL{{ include "llm-monitoring.rules.dcgmSelector" . }}
The label matchers of DCGM exporter series, "{...}" from prometheusRule.dcgmSelector, or nothing.
*/}}
{{- define "llm-monitoring.rules.dcgmSelector" -}}
{{- with .Values.prometheusRule.dcgmSelector -}}
{{ printf "{%s}" . }}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.rules.recordingRules" . | nindent 8 }}
Recording rules the alerts build on. Every one keeps `namespace` and `ray_io_cluster` (target labels of
the PodMonitors) so that two Ray clusters never mix. Names follow level:metric:operation.
*/}}
{{- define "llm-monitoring.rules.recordingRules" -}}
# Gateway responses per second by model and status code.
- record: model_status_code:llm_serving_requests:rate5m
  expr: sum by (namespace, ray_io_cluster, model, status_code) (rate(ray_llm_serving_requests_total[5m]))
- record: model:llm_serving_requests_5xx:ratio_rate5m
  expr: |-
    sum by (namespace, ray_io_cluster, model) (model_status_code:llm_serving_requests:rate5m{status_code=~"5.."})
    /
    sum by (namespace, ray_io_cluster, model) (model_status_code:llm_serving_requests:rate5m)
- record: model:llm_serving_requests_4xx:ratio_rate5m
  expr: |-
    sum by (namespace, ray_io_cluster, model) (model_status_code:llm_serving_requests:rate5m{status_code=~"4.."})
    /
    sum by (namespace, ray_io_cluster, model) (model_status_code:llm_serving_requests:rate5m)
- record: model:llm_serving_time_to_first_token_ms:p95_rate5m
  expr: |-
    histogram_quantile(0.95,
      sum by (namespace, ray_io_cluster, model, le) (rate(ray_llm_serving_time_to_first_token_ms_bucket[5m])))
- record: model:llm_serving_inter_token_latency_ms:p95_rate5m
  expr: |-
    histogram_quantile(0.95,
      sum by (namespace, ray_io_cluster, model, le) (rate(ray_llm_serving_inter_token_latency_ms_bucket[5m])))
# Healthy replicas per deployment. With Serve's default per-replica series (1 healthy, 0 not, 0 once
# stopped) and with RAY_SERVE_CONTROLLER_METRICS_INCLUDE_HIGH_CARDINALITY_TAGS=0 (one series holding
# the count), the sum is the number of healthy replicas.
- record: deployment:ray_serve_deployment_replica_healthy:sum
  expr: sum by (namespace, ray_io_cluster, application, deployment) (ray_serve_deployment_replica_healthy)
- record: deployment:ray_serve_autoscaling_target_replicas:max
  expr: max by (namespace, ray_io_cluster, application, deployment) (ray_serve_autoscaling_target_replicas)
# Failed health checks in the last 30 minutes. The counter is per replica and appears at its first
# failure (already at 1 or more), which increase() would miss: a series that did not exist 30 minutes
# ago counts from 0. Only for deployments Prometheus already knew 30 minutes ago, so that the old
# counters it sees right after the monitoring is installed do not count as new failures.
- record: deployment:ray_serve_health_check_failures:increase30m
  expr: |-
    sum by (namespace, ray_io_cluster, application, deployment) (
      ray_serve_health_check_failures_total
      - (ray_serve_health_check_failures_total offset 30m or ray_serve_health_check_failures_total * 0)
    )
    and on (namespace, ray_io_cluster, application, deployment)
    max by (namespace, ray_io_cluster, application, deployment) (ray_serve_deployment_status offset 30m)
{{- end -}}

{{/*
Usage: {{ $catalog := include "llm-monitoring.rules.alertCatalog" . | fromYaml }}
Every alert the chart knows, keyed by name: expr (with the threshold of prometheusRule.alerts.<name>),
summary and description. Prometheus templates ({{ $labels.x }}, {{ $value }}) are kept verbatim.
prometheusrule.yaml adds for, severity, alertLabels and runbook_url from values.
*/}}
{{- define "llm-monitoring.rules.alertCatalog" -}}
{{- $alerts := .Values.prometheusRule.alerts -}}
{{- $dcgm := include "llm-monitoring.rules.dcgmSelector" . -}}
LLMServingTimeToFirstTokenHigh:
  expr: model:llm_serving_time_to_first_token_ms:p95_rate5m > {{ $alerts.LLMServingTimeToFirstTokenHigh.threshold }}
  summary: {{`Time to first token of {{ $labels.model }} is slow.`}}
  description: >-
    {{`p95 time to first token of model {{ $labels.model }} in {{ $labels.namespace }}/{{ $labels.ray_io_cluster }}
    is {{ $value | printf "%.0f" }} ms`}} (threshold {{ $alerts.LLMServingTimeToFirstTokenHigh.threshold }} ms).
LLMServingInterTokenLatencyHigh:
  expr: model:llm_serving_inter_token_latency_ms:p95_rate5m > {{ $alerts.LLMServingInterTokenLatencyHigh.threshold }}
  summary: {{`Tokens of {{ $labels.model }} stream slowly.`}}
  description: >-
    {{`p95 inter-token latency of model {{ $labels.model }} in {{ $labels.namespace }}/{{ $labels.ray_io_cluster }}
    is {{ $value | printf "%.0f" }} ms`}} (threshold {{ $alerts.LLMServingInterTokenLatencyHigh.threshold }} ms).
LLMServingServerErrorRatioHigh:
  expr: model:llm_serving_requests_5xx:ratio_rate5m > {{ $alerts.LLMServingServerErrorRatioHigh.threshold }}
  summary: {{`Model {{ $labels.model }} answers with server errors.`}}
  description: >-
    {{`{{ $value | humanizePercentage }} of the responses of model {{ $labels.model }} in
    {{ $labels.namespace }}/{{ $labels.ray_io_cluster }} have a 5xx status`}} (threshold {{ $alerts.LLMServingServerErrorRatioHigh.threshold }}).
LLMServingClientErrorRatioHigh:
  expr: model:llm_serving_requests_4xx:ratio_rate5m > {{ $alerts.LLMServingClientErrorRatioHigh.threshold }}
  summary: {{`Many requests for {{ $labels.model }} are rejected.`}}
  description: >-
    {{`{{ $value | humanizePercentage }} of the responses of model {{ $labels.model }} in
    {{ $labels.namespace }}/{{ $labels.ray_io_cluster }} have a 4xx status`}} (threshold {{ $alerts.LLMServingClientErrorRatioHigh.threshold }}).
LLMServingNoSuccessfulResponses:
  expr: |-
    sum by (namespace, ray_io_cluster, model) (rate(ray_llm_serving_requests_total{status_code!="404"}[10m]))
      > {{ $alerts.LLMServingNoSuccessfulResponses.threshold }}
    unless on (namespace, ray_io_cluster, model)
    sum by (namespace, ray_io_cluster, model) (rate(ray_llm_serving_requests_total{status_code=~"2.."}[10m])) > 0
  summary: {{`Model {{ $labels.model }} has traffic but no successful response.`}}
  description: >-
    {{`Model {{ $labels.model }} in {{ $labels.namespace }}/{{ $labels.ray_io_cluster }} received
    {{ $value | printf "%.2f" }} requests/s over 10 minutes and answered none of them with a 2xx status.`}}
LLMServingEngineQueueHigh:
  expr: max by (namespace, ray_io_cluster, model_name) (ray_vllm_num_requests_waiting) > {{ $alerts.LLMServingEngineQueueHigh.threshold }}
  summary: {{`Requests queue up in the engines of {{ $labels.model_name }}.`}}
  description: >-
    {{`An engine of model {{ $labels.model_name }} in {{ $labels.namespace }}/{{ $labels.ray_io_cluster }}
    has {{ $value | printf "%.0f" }} requests waiting`}} (threshold {{ $alerts.LLMServingEngineQueueHigh.threshold }}).
LLMServingKVCacheNearlyFull:
  expr: max by (namespace, ray_io_cluster, model_name) (ray_vllm_kv_cache_usage_perc) > {{ $alerts.LLMServingKVCacheNearlyFull.threshold }}
  summary: {{`KV cache of {{ $labels.model_name }} is nearly full.`}}
  description: >-
    {{`An engine of model {{ $labels.model_name }} in {{ $labels.namespace }}/{{ $labels.ray_io_cluster }}
    uses {{ $value | humanizePercentage }} of its KV cache`}} (threshold {{ $alerts.LLMServingKVCacheNearlyFull.threshold }}).
LLMServingDeploymentUnhealthy:
  expr: |-
    max by (namespace, ray_io_cluster, application, deployment) (ray_serve_deployment_status) == 1
    or
    max by (namespace, ray_io_cluster, application, deployment) (ray_serve_deployment_status) == 2
  summary: {{`Serve deployment {{ $labels.deployment }} is unhealthy.`}}
  description: >-
    {{`Ray Serve reports deployment {{ $labels.deployment }} of application {{ $labels.application }} in
    {{ $labels.namespace }}/{{ $labels.ray_io_cluster }} as
    {{ if eq $value 1.0 }}DEPLOY_FAILED{{ else }}UNHEALTHY{{ end }}.`}}
LLMServingReplicasBelowTarget:
  expr: |-
    (
      deployment:ray_serve_deployment_replica_healthy:sum
        / on (namespace, ray_io_cluster, application, deployment)
      deployment:ray_serve_autoscaling_target_replicas:max
      or on (namespace, ray_io_cluster, application, deployment)
      0 * (deployment:ray_serve_autoscaling_target_replicas:max > 0)
    ) < {{ $alerts.LLMServingReplicasBelowTarget.threshold }}
  summary: {{`Deployment {{ $labels.deployment }} has fewer healthy replicas than it needs.`}}
  description: >-
    {{`Deployment {{ $labels.deployment }} of application {{ $labels.application }} in
    {{ $labels.namespace }}/{{ $labels.ray_io_cluster }} has {{ $value | humanizePercentage }} of its target
    replicas healthy`}} (threshold {{ $alerts.LLMServingReplicasBelowTarget.threshold }}).
LLMServingReplicasRestarting:
  expr: deployment:ray_serve_health_check_failures:increase30m > {{ $alerts.LLMServingReplicasRestarting.threshold }}
  summary: {{`Replicas of {{ $labels.deployment }} keep failing health checks.`}}
  description: >-
    {{`Replicas of deployment {{ $labels.deployment }} of application {{ $labels.application }} in
    {{ $labels.namespace }}/{{ $labels.ray_io_cluster }} failed {{ $value | printf "%.0f" }} health checks in
    30 minutes; Serve replaces a replica after 3 failures in a row`}} (threshold {{ $alerts.LLMServingReplicasRestarting.threshold }}).
LLMServingGPUUtilizationHigh:
  expr: avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL{{ $dcgm }}) > {{ $alerts.LLMServingGPUUtilizationHigh.threshold }}
  summary: {{`GPUs of {{ $labels.Hostname }} are saturated.`}}
  description: >-
    {{`The GPUs of node {{ $labels.Hostname }} are {{ $value | printf "%.0f" }} % busy on average`}}
    (threshold {{ $alerts.LLMServingGPUUtilizationHigh.threshold }} %).
LLMServingGPUIdle:
  expr: avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL{{ $dcgm }}) < {{ $alerts.LLMServingGPUIdle.threshold }}
  summary: {{`GPUs of {{ $labels.Hostname }} are idle.`}}
  description: >-
    {{`The GPUs of node {{ $labels.Hostname }} are {{ $value | printf "%.0f" }} % busy on average`}}
    (threshold {{ $alerts.LLMServingGPUIdle.threshold }} %).
LLMServingRayServiceNotReady:
  expr: max by (namespace, name) (kuberay_service_condition_ready{condition="false"}) == 1
  summary: {{`RayService {{ $labels.namespace }}/{{ $labels.name }} is not ready.`}}
  description: >-
    {{`The KubeRay operator reports RayService {{ $labels.namespace }}/{{ $labels.name }} without the Ready
    condition: its Serve applications are not serving.`}}
LLMServingRayServiceInitializingTimeout:
  # KubeRay v1.7.0 (ray-operator/controllers/ray/rayservice_controller.go, markFailedOnInitializingTimeout)
  # sets Ready=False, reason InitializingTimeout, clears the cluster names and deletes the RayClusters;
  # the state is terminal. Its metrics carry no reason (metrics/ray_service_metrics.go), so the alert
  # reads the state from what it leaves: not Ready, and no RayCluster of the RayService. KubeRay names
  # those "<RayService>-<5 random characters>" (utils.GenerateRayClusterName) and labels them
  # owner_kind="RayService" in kuberay_cluster_info (metrics/ray_cluster_metrics.go).
  expr: |-
    max by (namespace, name) (kuberay_service_condition_ready{condition="false"})
    unless on (namespace, name)
    max by (namespace, name) (
      label_replace(kuberay_cluster_info{owner_kind="RayService"}, "name", "$1", "name", "(.+)-[a-z0-9]{5}")
    )
  summary: {{`RayService {{ $labels.namespace }}/{{ $labels.name }} gave up initializing.`}}
  description: >-
    {{`RayService {{ $labels.namespace }}/{{ $labels.name }} is not Ready and owns no RayCluster: the KubeRay
    operator marked it InitializingTimeout (ray.io/initializing-timeout exceeded) and deleted its clusters.
    The state is terminal: helm upgrade and Flux cannot recover it; delete the RayService and let Helm or
    Flux recreate it.`}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.dashboards.name" (dict "ctx" $ "dashboard" "llm-overview") }}
Name of the ConfigMap of one dashboard (its file name under dashboards/ without ".json"); the
prefix is cut so that the dashboard name always survives the 63-character limit.
*/}}
{{- define "llm-monitoring.dashboards.name" -}}
{{- $prefix := include "llm-monitoring.fullname" .ctx | trunc (int (sub 62 (len .dashboard))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix .dashboard -}}
{{- end -}}

{{/*
Usage: {{ include "llm-monitoring.durationSeconds" .Values.podMonitors.interval | float64 }}
A Prometheus duration ("30s", "1m30s", "500ms") in seconds, as a float.
*/}}
{{- define "llm-monitoring.durationSeconds" -}}
{{- $seconds := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 "y" 31536000.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(ms|[smhdwy])" . -1 -}}
{{- $total = addf $total (mulf (regexFind "^[0-9]+" . | float64) (get $seconds (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
Names and labels are computed here and nowhere else.
*/}}

{{/*
Usage: {{ include "llm-batch.name" . }}
The chart name, or nameOverride.
*/}}
{{- define "llm-batch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.fullname" . }}
The RayJob name and the prefix of every other object. Truncated to 47 characters: KubeRay names the
RayCluster `<name>-<suffix>` and its pods after that.
*/}}
{{- define "llm-batch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.chart" . }}
*/}}
{{- define "llm-batch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.selectorLabels" . }}
Immutable subset of the labels; never takes user labels.
*/}}
{{- define "llm-batch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-batch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.labels" . }}
*/}}
{{- define "llm-batch.labels" -}}
helm.sh/chart: {{ include "llm-batch.chart" . }}
{{ include "llm-batch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-serving
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.podLabels" (dict "root" . "component" "ray-head" "extra" .Values.head.podLabels) }}
*/}}
{{- define "llm-batch.podLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: llm-serving
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.configMapName" . }}
*/}}
{{- define "llm-batch.configMapName" -}}
{{- printf "%s-job" (include "llm-batch.fullname" .) -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.configPath" . }}
Where the job config is mounted on the head, where the entrypoint runs.
*/}}
{{- define "llm-batch.configPath" -}}
/etc/llm-batch/job.yaml
{{- end -}}

{{/*
Usage: {{ include "llm-batch.device" . }}
The job's model device (the job config's default is gpu).
*/}}
{{- define "llm-batch.device" -}}
{{- ((.Values.job.model | default dict).device) | default "gpu" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.image" . }}
repository:tag[@digest]. The default tag is appVersion, with `-cpu` when the model runs on the CPU.
*/}}
{{- define "llm-batch.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if not $tag -}}
{{- $tag = .Chart.AppVersion -}}
{{- if eq (include "llm-batch.device" .) "cpu" -}}
{{- $tag = printf "%s-cpu" $tag -}}
{{- end -}}
{{- end -}}
{{- $image := printf "%s:%s" .Values.image.repository $tag -}}
{{- if .Values.image.digest -}}
{{- $image = printf "%s@%s" $image .Values.image.digest -}}
{{- end -}}
{{- $image -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.groupResource" "l40s" }}
The Ray custom resource a GPU worker group advertises (1 per node), which a model naming the group in
`worker_group` asks a sliver of: llm_serving.config.WORKER_GROUP_RESOURCE_PREFIX + the group name.
*/}}
{{- define "llm-batch.groupResource" -}}
{{- printf "llm-serving-group:%s" . -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.env" . }}
Environment of every Ray container: caches, the CPU engine's KV cache, S3 and secret references.
*/}}
{{- define "llm-batch.env" -}}
- name: HF_HOME
  value: /models/huggingface
- name: LLM_SERVING_CACHE
  value: /models/llm-serving
{{- if eq (include "llm-batch.device" .) "cpu" }}
- name: VLLM_CPU_KVCACHE_SPACE
  value: "1"
{{- end }}
{{- with .Values.storage.s3 }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .accessKeyIdKey }}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .secretAccessKeyKey }}}
{{- end }}
{{- with .region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- range $name, $ref := .Values.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef: {name: {{ $ref.secretName }}, key: {{ $ref.key }}}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.volumeMounts" (dict "root" . "head" true) }}
*/}}
{{- define "llm-batch.volumeMounts" -}}
- name: shared-mem
  mountPath: /dev/shm
- name: model-cache
  mountPath: /models
{{- if .root.Values.storage.pvc.existingClaim }}
- name: data
  mountPath: {{ .root.Values.storage.pvc.mountPath }}
{{- end }}
{{- if .head }}
- name: job-config
  mountPath: {{ dir (include "llm-batch.configPath" .root) }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.volumes" (dict "root" . "head" true "sharedMemorySizeLimit" "2Gi") }}
*/}}
{{- define "llm-batch.volumes" -}}
- name: shared-mem
  emptyDir:
    medium: Memory
    sizeLimit: {{ .sharedMemorySizeLimit }}
- name: model-cache
  emptyDir:
    {{- with .root.Values.modelCache.sizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
{{- with .root.Values.storage.pvc.existingClaim }}
- name: data
  persistentVolumeClaim:
    claimName: {{ . }}
{{- end }}
{{- if .head }}
- name: job-config
  configMap:
    name: {{ include "llm-batch.configMapName" .root }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.podAnnotations" (dict "root" . "extra" .Values.head.podAnnotations) }}
*/}}
{{- define "llm-batch.podAnnotations" -}}
{{- $annotations := dict -}}
{{- if .root.Values.karpenter.doNotDisrupt -}}
{{- $_ := set $annotations "karpenter.sh/do-not-disrupt" "true" -}}
{{- end -}}
{{- $annotations = merge (deepCopy (.extra | default dict)) $annotations -}}
{{- if $annotations -}}
{{ toYaml $annotations }}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.nodeSelector" (dict "nodePool" "cpu" "extra" .Values.head.nodeSelector) }}
The node-pool label shared with the karpenter-nodepools chart, plus extra selector labels.
*/}}
{{- define "llm-batch.nodeSelector" -}}
{{- $selector := deepCopy (.extra | default dict) -}}
{{- if .nodePool -}}
{{- $_ := set $selector "llm-serving.io/node-pool" .nodePool -}}
{{- end -}}
{{- if $selector -}}
{{ toYaml $selector }}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-batch.gpuToleration" . }}
The taint every GPU node pool of the karpenter-nodepools chart carries.
*/}}
{{- define "llm-batch.gpuToleration" -}}
- key: nvidia.com/gpu
  operator: Equal
  value: "true"
  effect: NoSchedule
{{- end -}}

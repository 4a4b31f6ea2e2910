{{/*
Names and labels are computed here and nowhere else.
*/}}

{{/*
Usage: {{ include "llm-serving.name" . }}
The chart name, or nameOverride.
*/}}
{{- define "llm-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.fullname" . }}
The RayService name and the prefix of every other object. Truncated to 53 characters, not 63:
KubeRay names the serve Service `<name>-serve-svc` and the Ray clusters `<name>-<suffix>`.
*/}}
{{- define "llm-serving.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.chart" . }}
*/}}
{{- define "llm-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.selectorLabels" . }}
Immutable subset of the labels; never takes user labels.
*/}}
{{- define "llm-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.labels" . }}
Labels of every object the chart renders (not of Ray pod templates: see llm-serving.ray.podLabels).
*/}}
{{- define "llm-serving.labels" -}}
helm.sh/chart: {{ include "llm-serving.chart" . }}
{{ include "llm-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-serving
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.podLabels" (dict "root" . "component" "ray-head" "extra" .Values.head.podLabels) }}
Labels of Ray pod templates. They hold no chart or app version: the pod templates are part of the
Ray cluster spec, and any change there makes KubeRay roll out a whole new cluster (see
upgradeStrategy), which must not happen on a chart upgrade that changes nothing else.
app.kubernetes.io/name stays KubeRay's own (`kuberay`), which its tooling and dashboards expect.
*/}}
{{- define "llm-serving.ray.podLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: llm-serving
app.kubernetes.io/component: {{ .component }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.podSelector" . }}
Labels every Ray pod of this release carries (all its clusters, across upgrades): the chart's own
pod-template labels (llm-serving.ray.podLabels). Not ray.io/originated-from-cr-name: KubeRay v1.7 puts
that on the RayCluster and its Services, never on pods (ray-operator common/pod.go, labelPod).
*/}}
{{- define "llm-serving.ray.podSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: llm-serving
{{- end -}}

{{/*
Usage: {{ include "llm-serving.serveServiceName" . }}
The Service KubeRay creates for the Serve port of the serving cluster.
*/}}
{{- define "llm-serving.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "llm-serving.fullname" .) -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.servePort" . }}
The Ray Serve HTTP port (the OpenAI endpoint, /healthz and /readyz).
*/}}
{{- define "llm-serving.servePort" -}}
8000
{{- end -}}

{{/*
Usage: {{ include "llm-serving.serviceAccountName" . }}
*/}}
{{- define "llm-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llm-serving.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.modelCache.claimName" . }}
*/}}
{{- define "llm-serving.modelCache.claimName" -}}
{{- default (printf "%s-model-cache" (include "llm-serving.fullname" .)) .Values.modelCache.pvc.existingClaim -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.models.devices" . }}
The distinct `device` values of app.models (the app's default is gpu), sorted, comma-separated.
*/}}
{{- define "llm-serving.models.devices" -}}
{{- $devices := list -}}
{{- range $name, $model := (.Values.app.models | default dict) -}}
{{- $devices = append $devices ((($model | default dict).device) | default "gpu") -}}
{{- end -}}
{{- $devices | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.image" . }}
repository:tag[@digest]. The default tag is appVersion, with `-cpu` when every model runs on the CPU:
the model devices decide which image can run them, so the two cannot disagree.
*/}}
{{- define "llm-serving.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if not $tag -}}
{{- $tag = .Chart.AppVersion -}}
{{- if eq (include "llm-serving.models.devices" .) "cpu" -}}
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
Usage: {{ include "llm-serving.apiKeys.mountDir" . }}
Where the API keys Secret is mounted in every Ray container.
*/}}
{{- define "llm-serving.apiKeys.mountDir" -}}
/etc/llm-serving/api-keys
{{- end -}}

{{/*
Usage: {{ include "llm-serving.apiKeys.path" . }}
The keys file the app reads (app.gateway.auth.api_keys.file).
*/}}
{{- define "llm-serving.apiKeys.path" -}}
{{- printf "%s/%s" (include "llm-serving.apiKeys.mountDir" .) .Values.apiKeys.key -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.appArgs" . | fromYaml }}
The app's args: .Values.app verbatim, plus the keys file path when apiKeys.existingSecret is set,
minus `traffic` (that goes to the gateway deployment's user_config, see llm-serving.serveConfig).
*/}}
{{- define "llm-serving.appArgs" -}}
{{- $args := omit (deepCopy (.Values.app | default dict)) "traffic" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- $gateway := $args.gateway | default dict -}}
{{- $auth := $gateway.auth | default dict -}}
{{- $keys := $auth.api_keys | default dict -}}
{{- $_ := set $keys "file" (include "llm-serving.apiKeys.path" .) -}}
{{- $_ = set $auth "api_keys" $keys -}}
{{- $_ = set $gateway "auth" $auth -}}
{{- $_ = set $args "gateway" $gateway -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.serveConfig" . }}
The serveConfigV2 document: one Serve application running the app's builder on the whole route.
Serve restarts every replica (engines too) when `args` change, but only reconfigures the replicas
of a deployment whose user_config alone changed: app.traffic goes there, to the deployment the app
always names Gateway. Its twin for the local command is llm_serving.serve_config.serve_application.
*/}}
{{- define "llm-serving.serveConfig" -}}
{{- $application := dict "name" "llm-serving" "import_path" "llm_serving.app:build_app" "route_prefix" "/" "args" (include "llm-serving.appArgs" . | fromYaml) -}}
{{- $traffic := deepCopy ((.Values.app | default dict).traffic | default dict) -}}
{{- $_ := set $application "deployments" (list (dict "name" "Gateway" "user_config" $traffic)) -}}
{{- toYaml (dict "applications" (list $application)) -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.env" (dict "root" . "worker" true) }}
Environment of every Ray container: the fast path, the model cache (workers), Secrets by reference
and plain settings.
*/}}
{{- define "llm-serving.ray.env" -}}
{{- $root := .root -}}
{{- /* Always set, to "0" when off: the image may carry its own defaults for them. */}}
{{- $fastPath := ternary "1" "0" $root.Values.fastPath.enabled }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: {{ $fastPath | quote }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ $fastPath | quote }}
- name: RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING
  value: {{ $fastPath | quote }}
- name: RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S
  value: {{ $root.Values.fastPath.clientIdleTimeoutSeconds | toString | quote }}
{{- if .worker }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $root.Values.modelCache.mountPath | quote }}
- name: LLM_SERVING_CACHE
  value: {{ printf "%s/llm-serving" $root.Values.modelCache.mountPath | quote }}
{{- end }}
{{- $workersOnly := include "llm-serving.ray.workerOnlySecretNames" . | splitList "," }}
{{- range $name, $ref := $root.Values.secretEnv }}
{{- if or $.worker (not (or $ref.workersOnly (has $name $workersOnly))) }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName }}
      key: {{ $ref.key }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- end }}
{{- range $name, $value := $root.Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.workerOnlySecretNames" . }}
secretEnv names that never reach the head, whatever their `workersOnly`: model-hub credentials. The
head never loads weights (engines run on workers; head.rayStartParams num-cpus "0"), so a token there
is only exposure.
*/}}
{{- define "llm-serving.ray.workerOnlySecretNames" -}}
HF_TOKEN,HUGGING_FACE_HUB_TOKEN
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.envNames" . }}
Names the chart sets itself; secretEnv and extraEnv may not set them (validate.yaml).
*/}}
{{- define "llm-serving.ray.envNames" -}}
RAY_SERVE_THROUGHPUT_OPTIMIZED,RAY_SERVE_ENABLE_HA_PROXY,RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING,RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S,HF_HOME,LLM_SERVING_CACHE
{{- end -}}

{{/*
Usage: {{ include "llm-serving.quantityBytes" "8Gi" }}
A Kubernetes quantity (the values schema's `quantity`: digits, an optional fraction and suffix) in
whole bytes.
*/}}
{{- define "llm-serving.quantityBytes" -}}
{{- $q := toString . -}}
{{- $suffix := regexFind "(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$" $q -}}
{{- $number := trimSuffix $suffix $q -}}
{{- $multipliers := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- if contains "." $number -}}
{{- int64 (floor (mulf (float64 $number) (get $multipliers $suffix))) -}}
{{- else -}}
{{- mul (int64 $number) (int64 (get $multipliers $suffix)) -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.objectStoreBytes" "8Gi" }}
Ray's object store size for a pod whose /dev/shm has this sizeLimit: 80% of it. Left to itself Ray
2.60 takes 30% of the pod's memory (DEFAULT_OBJECT_STORE_MEMORY_PROPORTION, ray/_private/
ray_constants.py), capped at max(10 GB, 95% of /dev/shm) (resolve_object_store_memory,
ray/_private/utils.py), and when that exceeds /dev/shm it puts the store on disk ("This will harm
performance", determine_plasma_store_config, ray/_private/services.py): a 28Gi pod with an 8Gi
/dev/shm gets 8.4Gi, on disk. The other 20% is for NCCL and vLLM's shared-memory queues between
tensor-parallel ranks, which live in /dev/shm too. tests/unit/test_config.py checks the arithmetic
against Ray's functions.
*/}}
{{- define "llm-serving.ray.objectStoreBytes" -}}
{{- div (mul (int64 (include "llm-serving.quantityBytes" .)) 4) 5 -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.startParams" (dict "params" .Values.head.rayStartParams "sharedMemorySizeLimit" "2Gi") }}
A group's rayStartParams plus `object-store-memory` sized to its /dev/shm (llm-serving.ray.objectStoreBytes)
unless the values set it. Not a resource parameter: KubeRay accepts it beside a group's `resources` field.
*/}}
{{- define "llm-serving.ray.startParams" -}}
{{- $params := deepCopy (.params | default dict) -}}
{{- if not (hasKey $params "object-store-memory") -}}
{{- $_ := set $params "object-store-memory" (include "llm-serving.ray.objectStoreBytes" .sharedMemorySizeLimit) -}}
{{- end -}}
{{- toYaml $params -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.groupResource" "l40s-4x" }}
The Ray custom resource a GPU worker group advertises (1 per node) so a model naming the group in
`worker_group` lands only there: llm_serving.config.WORKER_GROUP_RESOURCE_PREFIX + the group name.
*/}}
{{- define "llm-serving.ray.groupResource" -}}
{{- printf "llm-serving-group:%s" . -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.volumeMounts" (dict "root" . "worker" true) }}
*/}}
{{- define "llm-serving.ray.volumeMounts" -}}
- name: shared-mem
  mountPath: /dev/shm
{{- if .root.Values.apiKeys.existingSecret }}
- name: api-keys
  mountPath: {{ include "llm-serving.apiKeys.mountDir" .root }}
  readOnly: true
{{- end }}
{{- if .worker }}
- name: model-cache
  mountPath: {{ .root.Values.modelCache.mountPath }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.volumes" (dict "root" . "worker" true "sharedMemorySizeLimit" "8Gi") }}
*/}}
{{- define "llm-serving.ray.volumes" -}}
{{- $root := .root -}}
- name: shared-mem
  emptyDir:
    medium: Memory
    sizeLimit: {{ .sharedMemorySizeLimit }}
{{- if $root.Values.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ $root.Values.apiKeys.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.apiKeys.key }}
        path: {{ $root.Values.apiKeys.key }}
{{- end }}
{{- if .worker }}
{{- $cache := $root.Values.modelCache }}
- name: model-cache
  {{- if eq $cache.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "llm-serving.modelCache.claimName" $root }}
  {{- else if eq $cache.type "hostPath" }}
  hostPath:
    path: {{ $cache.hostPath.path }}
    type: {{ $cache.hostPath.type }}
  {{- else }}
  emptyDir:
    {{- if $cache.emptyDir.sizeLimit }}
    sizeLimit: {{ $cache.emptyDir.sizeLimit }}
    {{- else }} {}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.ray.podAnnotations" (dict "root" . "extra" .Values.head.podAnnotations) }}
*/}}
{{- define "llm-serving.ray.podAnnotations" -}}
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
Usage: {{ include "llm-serving.ray.nodeSelector" (dict "nodePool" "cpu" "extra" .Values.head.nodeSelector) }}
The node-pool label shared with the karpenter-nodepools chart, plus extra selector labels.
*/}}
{{- define "llm-serving.ray.nodeSelector" -}}
{{- $selector := deepCopy (.extra | default dict) -}}
{{- if .nodePool -}}
{{- $_ := set $selector "llm-serving.io/node-pool" .nodePool -}}
{{- end -}}
{{- if $selector -}}
{{ toYaml $selector }}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.gpuToleration" . }}
The taint every GPU node pool of the karpenter-nodepools chart carries.
*/}}
{{- define "llm-serving.gpuToleration" -}}
- key: nvidia.com/gpu
  operator: Equal
  value: "true"
  effect: NoSchedule
{{- end -}}

{{/*
Usage: {{ include "llm-serving.gcsFaultToleranceOptions" . }}
The RayCluster's `gcsFaultToleranceOptions` (Redis backend) from .Values.gcsFaultTolerance: the
address, and the password and user name only as `valueFrom.secretKeyRef` (templates/validate.yaml
refuses a plain-text password before this renders). What KubeRay v1.7.0 does with them
(ray-operator/controllers/ray/common/pod.go, configureGCSFaultTolerance and configureRedisFT, at tag
v1.7.0): on the head container RAY_REDIS_ADDRESS=<redisAddress>, REDIS_PASSWORD and REDIS_USERNAME
from these references (with rayStartParams redis-password: $REDIS_PASSWORD, redis-username:
$REDIS_USERNAME), RAY_external_storage_namespace=<externalStorageNamespace, else the RayCluster UID>
and the pod annotations ray.io/ft-enabled: "true" and ray.io/external-storage-namespace; on worker
containers RAY_gcs_rpc_server_reconnect_timeout_s=600 unless set (utils/constant.go
DefaultWorkerRayGcsReconnectTimeoutS). The RayCluster also gets the finalizer
ray.io/gcs-ft-redis-cleanup-finalizer: on deletion a Job deletes the storage namespace from Redis
(raycluster_controller.go, buildRedisCleanupJob).
*/}}
{{- define "llm-serving.gcsFaultToleranceOptions" -}}
{{- $ft := .Values.gcsFaultTolerance -}}
{{- $options := dict "redisAddress" $ft.redisAddress -}}
{{- range $field := list "redisPassword" "redisUsername" -}}
{{- $ref := get $ft $field -}}
{{- if and (kindIs "map" $ref) $ref.existingSecret -}}
{{- $_ := set $options $field (dict "valueFrom" (dict "secretKeyRef" (dict "name" $ref.existingSecret "key" $ref.key))) -}}
{{- end -}}
{{- end -}}
{{- with $ft.externalStorageNamespace -}}
{{- $_ := set $options "externalStorageNamespace" . -}}
{{- end -}}
{{- toYaml $options -}}
{{- end -}}

{{/*
Usage: {{ include "llm-serving.gcsFaultToleranceEnvNames" . }}
Variables KubeRay v1.7.0 derives from gcsFaultToleranceOptions; its validation
(utils/validation.go, ValidateRayClusterSpec) refuses a head container that sets them itself
(RAY_REDIS_ADDRESS without the options "implicitly enables GCS fault tolerance"; REDIS_PASSWORD with
them; REDIS_USERNAME always), and a RAY_external_storage_namespace already on the container wins over
the options (configureRedisFT), which would bypass the externalStorageNamespace check. So extraEnv
and secretEnv may not set them (validate.yaml).
*/}}
{{- define "llm-serving.gcsFaultToleranceEnvNames" -}}
RAY_REDIS_ADDRESS,REDIS_PASSWORD,REDIS_USERNAME,RAY_external_storage_namespace
{{- end -}}

{{/*
Helpers of the karpenter-nodepools chart. Names and labels are computed here and nowhere else.
NodePools and EC2NodeClasses are cluster-scoped: no namespace, and their names are the map keys of
nodePools/nodeClasses, because the llm-serving chart selects nodes by the pool name.
*/}}

{{/*
Usage: {{ include "karpenter-nodepools.name" . }}
The chart name (nameOverride wins), at most 63 characters.
*/}}
{{- define "karpenter-nodepools.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.chart" . }}
The helm.sh/chart label value: "<chart>-<version>".
*/}}
{{- define "karpenter-nodepools.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.labels" . }}
Labels every object carries. No selectorLabels: the chart renders no workload or Service to select.
*/}}
{{- define "karpenter-nodepools.labels" -}}
helm.sh/chart: {{ include "karpenter-nodepools.chart" . }}
app.kubernetes.io/name: {{ include "karpenter-nodepools.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-serving
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ if include "karpenter-nodepools.capabilities.karpenter" . }}
Whether the cluster serves the Karpenter v1 APIs (or assumeApiVersions lists them). Prints "true" or nothing.
*/}}
{{- define "karpenter-nodepools.capabilities.karpenter" -}}
{{- $ok := true -}}
{{- range list "karpenter.sh/v1" "karpenter.k8s.aws/v1" -}}
{{- if not (or ($.Capabilities.APIVersions.Has .) (has . $.Values.assumeApiVersions)) -}}
{{- $ok = false -}}
{{- end -}}
{{- end -}}
{{- if $ok -}}true{{- end -}}
{{- end -}}

{{/*
Usage: {{- include "karpenter-nodepools.annotations" . | nindent 4 }} (under metadata:)
The annotations of NodePools and EC2NodeClasses: `helm.sh/resource-policy: keep` when keepOnUninstall
is on (deleting a NodePool terminates all of its nodes). Prints "annotations:" and its map, or nothing.
*/}}
{{- define "karpenter-nodepools.annotations" -}}
{{- if .Values.keepOnUninstall -}}
annotations:
  helm.sh/resource-policy: keep
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.placement.labelKey" . }}
The placement label key every node of a pool carries, with the pool name as value. Shared with the
llm-serving chart (its worker groups select it): change both or neither.
*/}}
{{- define "karpenter-nodepools.placement.labelKey" -}}
llm-serving.io/node-pool
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.placement.gpuTaint" . | nindent 8 }}
The taint of GPU nodes, shared with the llm-serving chart (its GPU worker groups tolerate it).
*/}}
{{- define "karpenter-nodepools.placement.gpuTaint" -}}
- key: nvidia.com/gpu
  value: "true"
  effect: NoSchedule
{{- end -}}

{{/*
Usage: {{ $pool := include "karpenter-nodepools.nodePool.settings" (dict "ctx" $ "pool" $raw) | fromJson }}
A NodePool's effective settings: the defaults of its type, each key replaced by the pool's own.
Returns JSON; `set` (unlike mergeOverwrite) lets false, "" and 0 override a default.
*/}}
{{- define "karpenter-nodepools.nodePool.settings" -}}
{{- $settings := deepCopy (index .ctx.Values.nodePoolDefaults .pool.type) -}}
{{- range $key, $value := .pool -}}
{{- $_ := set $settings $key $value -}}
{{- end -}}
{{- toJson $settings -}}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.nodePool.requirements" $pool | nindent 8 }}
The requirements of a NodePool: instance families/categories, the GPU count of GPU pools, capacity
types, architectures, Linux, then the extra requirements map, sorted by label key.
*/}}
{{- define "karpenter-nodepools.nodePool.requirements" -}}
{{- with .instanceFamilies }}
- key: karpenter.k8s.aws/instance-family
  operator: In
  values: {{ toJson . }}
{{- end }}
{{- if eq .type "gpu" }}
- key: karpenter.k8s.aws/instance-gpu-count
  operator: In
  values: [{{ int .gpusPerNode | toString | quote }}]
{{- end }}
{{- with .instanceCategories }}
- key: karpenter.k8s.aws/instance-category
  operator: In
  values: {{ toJson . }}
{{- end }}
- key: karpenter.sh/capacity-type
  operator: In
  values: {{ toJson .capacityTypes }}
- key: kubernetes.io/arch
  operator: In
  values: {{ toJson .architectures }}
- key: kubernetes.io/os
  operator: In
  values: ["linux"]
{{- range $key, $requirement := .requirements }}
- key: {{ $key }}
  operator: {{ $requirement.operator }}
  {{- with $requirement.values }}
  values: {{ toJson . }}
  {{- end }}
  {{- with $requirement.minValues }}
  minValues: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.nodePool.budgets" $pool.disruption.budgets | nindent 6 }}
The disruption budgets of a NodePool: the budgets map as a list, sorted by name.
*/}}
{{- define "karpenter-nodepools.nodePool.budgets" -}}
{{- range $name, $budget := . }}
- nodes: {{ $budget.nodes | quote }}
  {{- with $budget.reasons }}
  reasons: {{ toJson . }}
  {{- end }}
  {{- with $budget.schedule }}
  schedule: {{ . | quote }}
  {{- end }}
  {{- with $budget.duration }}
  duration: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.nodeClass.discoveryTerms" $ | nindent 4 }}
The default selector terms of a node class: resources tagged karpenter.sh/discovery=<clusterName>.
*/}}
{{- define "karpenter-nodepools.nodeClass.discoveryTerms" -}}
- tags:
    karpenter.sh/discovery: {{ .Values.clusterName | quote }}
{{- end -}}

{{/*
Usage: {{ include "karpenter-nodepools.nodeClass.blockDevices" $class | nindent 4 }}
Block devices of a node class, by AMI family: AL2023 boots from /dev/xvda and keeps images there;
Bottlerocket has a small OS volume (/dev/xvda) and a data volume (/dev/xvdb) for images and caches.
The sized volume is marked rootVolume, which Karpenter uses for ephemeral-storage.
*/}}
{{- define "karpenter-nodepools.nodeClass.blockDevices" -}}
{{- if eq .amiFamily "bottlerocket" }}
- deviceName: /dev/xvda
  ebs:
    volumeSize: 4Gi
    volumeType: gp3
    encrypted: {{ .volume.encrypted }}
    {{- with .volume.kmsKeyID }}
    kmsKeyID: {{ . }}
    {{- end }}
    deleteOnTermination: true
{{- end }}
- deviceName: {{ ternary "/dev/xvdb" "/dev/xvda" (eq .amiFamily "bottlerocket") }}
  rootVolume: true
  ebs:
    volumeSize: {{ .volume.size }}
    volumeType: {{ .volume.type }}
    {{- if has .volume.type (list "gp3" "io1" "io2") }}
    iops: {{ .volume.iops }}
    {{- end }}
    {{- if eq .volume.type "gp3" }}
    throughput: {{ .volume.throughput }}
    {{- end }}
    encrypted: {{ .volume.encrypted }}
    {{- with .volume.kmsKeyID }}
    kmsKeyID: {{ . }}
    {{- end }}
    deleteOnTermination: true
{{- end -}}

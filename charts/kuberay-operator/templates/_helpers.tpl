{{/*
Helpers of the kuberay-operator chart. Names and labels are computed here and nowhere else.
*/}}

{{/*
Usage: {{ include "kuberay-operator.name" . }}
The chart name (nameOverride wins), at most 63 characters.
*/}}
{{- define "kuberay-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.fullname" . }}
The full name prefix of every object: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>"; truncated to 63 characters, no trailing "-".
*/}}
{{- define "kuberay-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kuberay-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.chart" . }}
The helm.sh/chart label value: "<chart>-<version>".
*/}}
{{- define "kuberay-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.selectorLabels" . }}
Immutable subset of the labels; never takes user labels. Each component adds its own
app.kubernetes.io/component (kuberay-operator.operator.selectorLabels, kuberay-operator.metrics.selectorLabels).
*/}}
{{- define "kuberay-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kuberay-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.labels" . }}
Labels every object carries: the recommended app.kubernetes.io set plus commonLabels.
*/}}
{{- define "kuberay-operator.labels" -}}
helm.sh/chart: {{ include "kuberay-operator.chart" . }}
{{ include "kuberay-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kuberay-operator.operator.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kuberay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ if include "kuberay-operator.capabilities.has" (dict "ctx" $ "api" "monitoring.coreos.com/v1") }}
Whether an API group/version is served: what Helm discovered, or listed in assumeApiVersions (for
offline rendering). Prints "true" or nothing.
*/}}
{{- define "kuberay-operator.capabilities.has" -}}
{{- if or (.ctx.Capabilities.APIVersions.Has .api) (has .api .ctx.Values.assumeApiVersions) -}}
true
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.version" . }}
The KubeRay release the chart runs: image.tag, else the chart's appVersion. The image tag and the CRD
download URL both come from here, so they cannot disagree.
*/}}
{{- define "kuberay-operator.operator.version" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.selectorLabels" . }}
Selector labels of the operator pods: immutable, never user labels.
*/}}
{{- define "kuberay-operator.operator.selectorLabels" -}}
{{ include "kuberay-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.labels" . }}
Labels of the operator's objects.
*/}}
{{- define "kuberay-operator.operator.labels" -}}
{{ include "kuberay-operator.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.serviceAccountName" . }}
Name of the operator's ServiceAccount.
*/}}
{{- define "kuberay-operator.operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kuberay-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.clusterRoleName" . }}
Name of the operator's ClusterRole and ClusterRoleBinding. Cluster-scoped, so it carries the release
namespace: two releases of the same name in two namespaces do not collide.
*/}}
{{- define "kuberay-operator.operator.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kuberay-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.leaderElectionName" . }}
Name of the leader-election Role and RoleBinding.
*/}}
{{- define "kuberay-operator.operator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "kuberay-operator.fullname" . | trunc 47 | trimSuffix "-") -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.imageRef" (dict "image" .Values.crds.kubectl "tag" "v1.34.5") }}
An image reference "registry/repository:tag", with "@digest" when a digest is set.
*/}}
{{- define "kuberay-operator.imageRef" -}}
{{- $ref := printf "%s/%s:%s" .image.registry .image.repository .tag -}}
{{- if .image.digest -}}
{{- $ref = printf "%s@%s" $ref .image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.image" . }}
The operator image.
*/}}
{{- define "kuberay-operator.operator.image" -}}
{{- include "kuberay-operator.imageRef" (dict "image" .Values.image "tag" (include "kuberay-operator.operator.version" .)) -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.featureGates" . }}
The --feature-gates value: "Name=true,Other=false", sorted by name.
*/}}
{{- define "kuberay-operator.operator.featureGates" -}}
{{- $gates := list -}}
{{- range $name, $enabled := .Values.featureGates -}}
{{- $gates = append $gates (printf "%s=%t" $name $enabled) -}}
{{- end -}}
{{- join "," $gates -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.args" . | nindent 12 }}
The operator's command-line arguments, one list item per flag.
*/}}
{{- define "kuberay-operator.operator.args" -}}
- --metrics-addr={{ ternary ":8080" "0" .Values.metrics.enabled }}
- --enable-metrics={{ .Values.metrics.enabled }}
- --health-probe-bind-address=:8082
- --enable-leader-election={{ .Values.leaderElection.enabled }}
{{- with .Values.leaderElection.namespace }}
- --leader-election-namespace={{ . }}
{{- end }}
{{- with .Values.watchNamespaces }}
- --watch-namespace={{ join "," . }}
{{- end }}
- --reconcile-concurrency={{ .Values.reconcileConcurrency }}
- --qps={{ .Values.kubeClient.qps }}
- --burst={{ .Values.kubeClient.burst }}
- --log-stdout-encoder={{ .Values.logging.stdoutEncoder }}
- --zap-log-level={{ .Values.logging.level }}
{{- with .Values.batchScheduler }}
- --batch-scheduler={{ . }}
{{- end }}
- --feature-gates={{ include "kuberay-operator.operator.featureGates" . }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.operator.rules" . | nindent 2 }}
The RBAC rules the operator needs (ray-operator/config/rbac/role.yaml at the pinned release), plus
the batch-scheduler and KubernetesWAS rules when those are on. Rendered into a ClusterRole or Roles.
*/}}
{{- define "kuberay-operator.operator.rules" -}}
- apiGroups: [""]
  resources: [persistentvolumeclaims, pods/status, services]
  verbs: [create, delete, get, list, patch, update, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [create, delete, deletecollection, get, list, patch, update, watch]
- apiGroups: [""]
  resources: [pods/proxy, services/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [pods/resize]
  verbs: [patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, delete, get, list, update, watch]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, delete, get, list, watch]
- apiGroups: [""]
  resources: [services/proxy]
  verbs: [create, get, patch, update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, delete, get, list, patch, update, watch]
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [create, get, list, update, watch]
- apiGroups: [cert-manager.io]
  resources: [certificates/status]
  verbs: [get]
- apiGroups: [cert-manager.io]
  resources: [issuers]
  verbs: [create, get, list, watch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create, get, list, update]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [extensions, networking.k8s.io]
  resources: [ingresses]
  verbs: [create, delete, get, list, patch, update, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, httproutes]
  verbs: [create, delete, get, list, update, watch]
- apiGroups: [networking.k8s.io]
  resources: [ingressclasses]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, delete, get, list, update, watch]
- apiGroups: [ray.io]
  resources: [rayclusters, raycronjobs, rayjobs, rayservices]
  verbs: [create, delete, get, list, patch, update, watch]
- apiGroups: [ray.io]
  resources: [rayclusters/finalizers, raycronjobs/finalizers, rayjobs/finalizers, rayservices/finalizers]
  verbs: [update]
- apiGroups: [ray.io]
  resources: [rayclusters/status, raycronjobs/status, rayjobs/status, rayservices/status]
  verbs: [get, patch, update]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [create, delete, get, list, watch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [create, delete, get, list, update, watch]
- apiGroups: [route.openshift.io]
  resources: [routes]
  verbs: [create, delete, get, list, patch, update, watch]
{{- if .Values.featureGates.KubernetesWAS }}
- apiGroups: [scheduling.k8s.io]
  resources: [podgroups, workloads]
  verbs: [create, delete, get, list, patch, update, watch]
{{- end }}
{{- if eq .Values.batchScheduler "volcano" }}
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [create, delete, get, list, update, watch]
{{- end }}
{{- if eq .Values.batchScheduler "scheduler-plugins" }}
- apiGroups: [scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [create, get, list, watch]
{{- end }}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.metrics.labels" . }}
Labels of the metrics Service (the ServiceMonitor selects on the selector part).
*/}}
{{- define "kuberay-operator.metrics.labels" -}}
{{ include "kuberay-operator.labels" . }}
app.kubernetes.io/component: metrics
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.metrics.selectorLabels" . }}
Selector labels of the metrics Service, for the ServiceMonitor.
*/}}
{{- define "kuberay-operator.metrics.selectorLabels" -}}
{{ include "kuberay-operator.selectorLabels" . }}
app.kubernetes.io/component: metrics
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.metrics.name" . }}
Name of the metrics Service and ServiceMonitor.
*/}}
{{- define "kuberay-operator.metrics.name" -}}
{{- printf "%s-metrics" (include "kuberay-operator.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.name" . }}
Name of the CRD hook objects (Job, ServiceAccount, ClusterRole, ClusterRoleBinding). The ClusterRole
and its binding are cluster-scoped, so the name carries the release namespace to stay unique.
*/}}
{{- define "kuberay-operator.crds.name" -}}
{{- printf "%s-crds" (include "kuberay-operator.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.clusterName" . }}
Name of the cluster-scoped CRD hook ClusterRole and ClusterRoleBinding: unique per release namespace.
*/}}
{{- define "kuberay-operator.crds.clusterName" -}}
{{- printf "%s-%s-crds" .Release.Namespace (include "kuberay-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.labels" . }}
Labels of the CRD hook objects.
*/}}
{{- define "kuberay-operator.crds.labels" -}}
{{ include "kuberay-operator.labels" . }}
app.kubernetes.io/component: crds
{{- end -}}

{{/*
Usage: {{ range include "kuberay-operator.crds.plurals" . | fromJsonArray }}
The ray.io CRDs of the pinned KubeRay release (resource plurals), all served as ray.io/v1.
*/}}
{{- define "kuberay-operator.crds.plurals" -}}
{{- list "rayclusters" "rayjobs" "rayservices" "raycronjobs" | toJson -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.apiVersion" . }}
The API version the operator reads and writes; the Job checks that every CRD serves and stores it.
*/}}
{{- define "kuberay-operator.crds.apiVersion" -}}
v1
{{- end -}}

{{/*
Usage: {{ range include "kuberay-operator.crds.names" . | fromJsonArray }}
The CRD object names ("rayclusters.ray.io", ...), as a JSON list.
*/}}
{{- define "kuberay-operator.crds.names" -}}
{{- $names := list -}}
{{- range include "kuberay-operator.crds.plurals" . | fromJsonArray -}}
{{- $names = append $names (printf "%s.ray.io" .) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
Usage: {{ range include "kuberay-operator.crds.urls" . | fromJsonArray }}
The CRD download URLs: <baseUrl>/<operator version>/ray-operator/config/crd/bases/ray.io_<plural>.yaml.
*/}}
{{- define "kuberay-operator.crds.urls" -}}
{{- $base := trimSuffix "/" .Values.crds.baseUrl -}}
{{- $version := include "kuberay-operator.operator.version" . -}}
{{- $urls := list -}}
{{- range include "kuberay-operator.crds.plurals" . | fromJsonArray -}}
{{- $urls = append $urls (printf "%s/%s/ray-operator/config/crd/bases/ray.io_%s.yaml" $base $version .) -}}
{{- end -}}
{{- toJson $urls -}}
{{- end -}}

{{/*
Usage: {{ if include "kuberay-operator.crds.fromConfigMaps" . }}
Whether the Job reads the CRDs from ConfigMaps (crds.source bundled or configMap) rather than URLs.
Prints "true" or nothing.
*/}}
{{- define "kuberay-operator.crds.fromConfigMaps" -}}
{{- if has .Values.crds.source (list "bundled" "configMap") -}}
true
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.bundledFile" "rayclusters" }}
Path inside the chart of a bundled (vendored, gzipped) CRD file: files/crds/ray.io_<plural>.yaml.gz.
*/}}
{{- define "kuberay-operator.crds.bundledFile" -}}
{{- printf "files/crds/ray.io_%s.yaml.gz" . -}}
{{- end -}}

{{/*
Usage: {{ $sources := include "kuberay-operator.crds.bundledSources" . | fromJson }}
The provenance of the bundled CRD files (files/crds/SOURCES.json: upstream repo, tag, commit, path,
sha256 of the upstream YAML and of the .gz). An empty object when the chart has no SOURCES.json.
*/}}
{{- define "kuberay-operator.crds.bundledSources" -}}
{{- $raw := .Files.Get "files/crds/SOURCES.json" -}}
{{- if $raw -}}
{{- $raw -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.bundledConfigMapName" (dict "ctx" $ "plural" "rayjobs") }}
Name of the hook ConfigMap that carries one bundled CRD (one per CRD: each stays far below 1 MiB).
*/}}
{{- define "kuberay-operator.crds.bundledConfigMapName" -}}
{{- printf "%s-%s" (include "kuberay-operator.crds.name" .ctx | trunc 50 | trimSuffix "-") .plural -}}
{{- end -}}

{{/*
Usage: {{ range include "kuberay-operator.crds.configMapNames" . | fromJsonArray }}
The ConfigMaps the Job reads: the chart's own per-CRD ConfigMaps (source bundled) or
crds.configMaps (source configMap), as a JSON list.
*/}}
{{- define "kuberay-operator.crds.configMapNames" -}}
{{- if eq .Values.crds.source "bundled" -}}
{{- $names := list -}}
{{- range include "kuberay-operator.crds.plurals" . | fromJsonArray -}}
{{- $names = append $names (include "kuberay-operator.crds.bundledConfigMapName" (dict "ctx" $ "plural" .)) -}}
{{- end -}}
{{- toJson $names -}}
{{- else -}}
{{- toJson .Values.crds.configMaps -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.hookAnnotations" (dict "weight" "-10") | nindent 4 }}
Hook annotations of the CRD objects: run before install and upgrade, in weight order, replaced on the
next run and deleted once every hook succeeded (a failed Job stays for its logs).
*/}}
{{- define "kuberay-operator.crds.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.kubectlImage" . }}
The kubectl image of the CRD hook Job.
*/}}
{{- define "kuberay-operator.crds.kubectlImage" -}}
{{- include "kuberay-operator.imageRef" (dict "image" .Values.crds.kubectl "tag" .Values.crds.kubectl.tag) -}}
{{- end -}}

{{/*
Usage: {{ include "kuberay-operator.crds.containerCommon" . | nindent 10 }}
What every container of the CRD hook Job shares: env (HOME on the writable /tmp, where kubectl keeps
its discovery cache), mounts, resources and a locked-down security context.
*/}}
{{- define "kuberay-operator.crds.containerCommon" -}}
env:
  - name: HOME
    value: /tmp
  {{- with .Values.crds.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if include "kuberay-operator.crds.fromConfigMaps" . }}
  - name: crds
    mountPath: /crds
  - name: crd-source
    mountPath: /crd-source
    readOnly: true
  {{- end }}
  {{- with .Values.crds.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
resources:
  {{- toYaml .Values.crds.resources | nindent 2 }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop:
      - ALL
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

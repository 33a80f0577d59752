{{/*
Names. Kubernetes names are at most 63 characters.
*/}}
{{- define "iommufd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "iommufd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "iommufd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels on every object; the selector uses only name and instance, which never change.
*/}}
{{- define "iommufd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iommufd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "iommufd.labels" -}}
{{ include "iommufd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: device-plugin
app.kubernetes.io/part-of: kubevirt
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "iommufd.chart" . }}
{{- end -}}

{{- define "iommufd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "iommufd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Images: the tag defaults to the chart's appVersion.
*/}}
{{- define "iommufd.brokerImage" -}}
{{- printf "%s:%s" .Values.fdBroker.image.repository (default .Chart.AppVersion .Values.fdBroker.image.tag) -}}
{{- end -}}

{{- define "iommufd.bridgeImage" -}}
{{- printf "%s:%s" .Values.kubeletBridge.image.repository (default .Chart.AppVersion .Values.kubeletBridge.image.tag) -}}
{{- end -}}

{{/*
Fixed paths inside the pod. The broker's control socket lives in a pod-private
emptyDir; the host's /dev is mounted at /host/dev in the broker only.
*/}}
{{- define "iommufd.brokerSocketDir" -}}/var/run/iommufd-broker{{- end -}}
{{- define "iommufd.brokerSocket" -}}/var/run/iommufd-broker/broker.sock{{- end -}}
{{- define "iommufd.hostDevMount" -}}/host/dev{{- end -}}
{{- define "iommufd.podResourcesSocket" -}}{{ trimSuffix "/" .Values.kubelet.podResourcesDir }}/kubelet.sock{{- end -}}

{{/*
Whether the bridge runs as a non-root uid (and so needs the host-access containers).
*/}}
{{- define "iommufd.bridgeIsRoot" -}}
{{- if eq (int .Values.kubeletBridge.runAsUser) 0 -}}true{{- end -}}
{{- end -}}

{{- define "iommufd.hostAccessInit" -}}
{{- if and .Values.hostAccess.enabled (not (include "iommufd.bridgeIsRoot" .)) -}}true{{- end -}}
{{- end -}}

{{- define "iommufd.hostAccessSidecar" -}}
{{- if and (include "iommufd.hostAccessInit" .) .Values.hostAccess.keepGranted -}}true{{- end -}}
{{- end -}}

{{/*
The host-access shell functions (in container args, where the kubelet turns $$ into $), shared by the init container and the sidecar.
grant_socket gives the bridge's uid read/write on a socket through a POSIX
ACL, unless it already has it in effect (the kubelet creates its sockets
root-owned 0755, and a new socket replaces the grant when the kubelet restarts).
*/}}
{{- define "iommufd.hostAccessFunctions" -}}
log() { printf '{"time":"%s","service":"host-access","event":"%s","path":"%s"}\n' "$$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2"; }
grant_socket() {
  [ -S "$1" ] || return 0
  getfacl -cn "$1" 2>/dev/null | grep -qx "user:${BRIDGE_UID}:rw-" && return 0
  if setfacl -m "u:${BRIDGE_UID}:rw" "$1"; then log access_granted "$1"; else log access_grant_failed "$1"; return 1; fi
}
{{- end -}}

{{- define "iommufd.hostAccessEnv" -}}
- name: BRIDGE_UID
  value: {{ .Values.kubeletBridge.runAsUser | quote }}
- name: BRIDGE_GID
  value: {{ .Values.kubeletBridge.runAsGroup | quote }}
- name: SOCKET_DIR
  value: {{ .Values.socketDir | quote }}
- name: DEVICE_PLUGINS_DIR
  value: {{ .Values.kubelet.devicePluginsDir | quote }}
- name: POD_RESOURCES_DIR
  value: {{ .Values.kubelet.podResourcesDir | quote }}
{{- end -}}

{{- define "iommufd.hostAccessMounts" -}}
- name: fd-sockets
  mountPath: {{ .Values.socketDir | quote }}
- name: device-plugins
  mountPath: {{ .Values.kubelet.devicePluginsDir | quote }}
- name: pod-resources
  mountPath: {{ .Values.kubelet.podResourcesDir | quote }}
{{- end -}}

"""An HTTP fake of the Kubernetes API server, for testing the kubernetes backend over the wire.

It stands in for the API server because none can run on these machines (no kube-apiserver is
packaged in the registries reached here, and there is no container engine): the adapter is tested
through the official client, over real HTTP, against this fake. It answers in the shapes a real
API server uses (see the project's notes on the Job API, taken from the Kubernetes sources and a
real-cluster capture), because the client validates responses against its typed models:

- create: 201 with the defaulted object and `"status": {}`; strict decoding (ill-typed fields are a
  400, unknown ones a 400 under fieldValidation=Strict, else dropped with a Warning header);
  validation errors are 422 `Invalid` with causes; a missing namespace is a 404, a taken name 409.
- errors are `Status` objects; deleting a Job without a propagation policy orphans its pods and
  says so in a `Warning: 299` header; an immediate delete answers `Status{status: Success}`.
- the job controller is driven by the test: `start`, `succeed`, `fail`, `deadline_exceeded`,
  `kueue_admit`, `kueue_preempt`, `expire`, writing conditions in two steps (SuccessCriteriaMet or
  FailureTarget first, as recent servers do) or in one (`delay_terminal_condition=False`, as older
  servers do), and checking each status against the API server's own status validation rules.
- namespaces are created, read, listed, replaced (PUT) and patched (strategic-merge or JSON
  merge patches: maps merge, null removes a key, lists are replaced; the fake does not take JSON
  Patch, which the adapter never sends); ResourceQuotas (/api/v1/.../resourcequotas) and
  NetworkPolicies (/apis/networking.k8s.io/v1/.../networkpolicies) are created, read, listed
  (per namespace or across them, by label and by metadata.name/metadata.namespace field
  selectors), replaced with resourceVersion checks (409 Conflict when stale) and deleted,
  validated as the API server validates them. Secrets (/api/v1/.../secrets) likewise, kept as
  the API server keeps them (`stringData` folded into base64 `data`), and deleted by the garbage
  collector with the Job that owns them (a Background or Foreground delete, or the TTL).
- a pod whose container takes its environment from a Secret that does not exist (`envFrom`
  without `optional: true`) is created, but its container waits with CreateContainerConfigError,
  as the kubelet leaves it.
- Kueue's topology-aware scheduling (`kueue_admit` of a Job whose pod template asks for it with
  `kueue.x-k8s.io/podset-required-topology` or `-preferred-topology`, naming a node label): its
  pods go to nodes of one domain of that label with room for all of them (Kueue sets each pod's
  node selector when it ungates it); a required topology that no domain has room for leaves the
  Workload pending. Kueue's webhook refuses a template with both annotations, or a value that is
  not a label name, as Kueue's own validation does.
- admission when the controller creates a pod (`start`): the namespace's Pod Security level (its
  `pod-security.kubernetes.io/enforce` label; `warn` adds a Warning to a Job whose template would
  violate it) and its ResourceQuotas on requests.nvidia.com/gpu, refusing with the API server's
  own messages; a quota's status says what its namespace's pods use, as the quota controller
  writes it.
- every request is recorded, so tests can count the calls a sync makes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import ipaddress
import itertools
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-token-" + "0" * 16
USER = "system:serviceaccount:aif:portal"
GPU = "nvidia.com/gpu"
GPU_QUOTA = f"requests.{GPU}"
NAME_LABEL = "kubernetes.io/metadata.name"
POD_SECURITY = "pod-security.kubernetes.io/"
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"
KUEUE_PREFERRED_TOPOLOGY = "kueue.x-k8s.io/podset-preferred-topology"
KUEUE_UNCONSTRAINED_TOPOLOGY = "kueue.x-k8s.io/podset-unconstrained-topology"
ORPHAN_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress "
    'this warning"'
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Status errors, as the API server writes them ------------------------------------------------


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(resource: str, name: str, group: str) -> dict[str, str]:
    details = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = resource
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404, "NotFound", f'{_qualified(resource, group)} "{name}" not found', _details(resource, name, group)
    )


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(resource, group)} "{name}" already exists',
        _details(resource, name, group),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass
class FieldError:
    field: str
    type: str  # FieldValueRequired, FieldValueInvalid, FieldValueNotSupported
    body: str  # what follows "<field>: " in the message

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))


def invalid_value(path: str, value: Any, detail: str) -> FieldError:
    shown = json.dumps(value) if isinstance(value, str) else value
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {shown}: {detail}")


def not_supported(path: str, value: str, supported: list[str]) -> FieldError:
    values = ", ".join(f'"{v}"' for v in supported)
    return FieldError(
        path, "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {values}'
    )


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}.{group} "{name}" is invalid: {listed}' if group else f'{kind} "{name}" is invalid: {listed}',
        {
            "name": name,
            **({"group": group} if group else {}),
            "kind": kind,
            "causes": [{"reason": e.type, "message": e.body, "field": e.field} for e in errors],
        },
    )


def conflict(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _details(resource, name, group),
    )


def forbidden_value(path: str, detail: str) -> FieldError:
    return FieldError(path, "FieldValueForbidden", f"Forbidden: {detail}")


def forbidden(verb: str, resource: str, group: str, namespace: str) -> ApiError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return ApiError(
        403,
        "Forbidden",
        f'{_qualified(resource, group)} is forbidden: User "{USER}" cannot {verb} resource "{resource}" '
        f'in API group "{group}"{where}',
        {"group": group, "kind": resource} if group else {"kind": resource},
    )


# --- strict decoding ------------------------------------------------------------------------------

STR, INT, INT64, BOOL, QTY, ANY = "string", "int32", "int64", "bool", "quantity", "any"
INT_OR_STR = "intstr"


def Map(value) -> tuple[str, Any]:
    return ("map", value)


def List(value) -> tuple[str, Any]:
    return ("list", value)


OBJECT_META = {
    "name": STR,
    "generateName": STR,
    "namespace": STR,
    "labels": Map(STR),
    "annotations": Map(STR),
    # Set by the server; sent back in a replace (resourceVersion makes it conditional).
    "uid": STR,
    "resourceVersion": STR,
    "generation": INT64,
    "creationTimestamp": STR,
    "deletionTimestamp": STR,
    "ownerReferences": List(
        {
            "apiVersion": STR,
            "kind": STR,
            "name": STR,
            "uid": STR,
            "controller": BOOL,
            "blockOwnerDeletion": BOOL,
        }
    ),
}
SECCOMP_PROFILE = {"type": STR, "localhostProfile": STR}
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": BOOL,
    "runAsUser": INT64,
    "runAsGroup": INT64,
    "fsGroup": INT64,
    "supplementalGroups": List(INT64),
    "seccompProfile": SECCOMP_PROFILE,
}
SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": BOOL,
    "capabilities": {"add": List(STR), "drop": List(STR)},
    "privileged": BOOL,
    "readOnlyRootFilesystem": BOOL,
    "runAsNonRoot": BOOL,
    "runAsUser": INT64,
    "runAsGroup": INT64,
    "seccompProfile": SECCOMP_PROFILE,
}
CONTAINER = {
    "name": STR,
    "image": STR,
    "command": List(STR),
    "args": List(STR),
    "workingDir": STR,
    "env": List(
        {"name": STR, "value": STR, "valueFrom": {"fieldRef": {"apiVersion": STR, "fieldPath": STR}}}
    ),
    "envFrom": List(
        {
            "prefix": STR,
            "configMapRef": {"name": STR, "optional": BOOL},
            "secretRef": {"name": STR, "optional": BOOL},
        }
    ),
    "resources": {"requests": Map(QTY), "limits": Map(QTY)},
    "imagePullPolicy": STR,
    "securityContext": SECURITY_CONTEXT,
}
POD_SPEC = {
    "containers": List(CONTAINER),
    "restartPolicy": STR,
    "nodeSelector": Map(STR),
    "automountServiceAccountToken": BOOL,
    "serviceAccountName": STR,
    "priorityClassName": STR,
    "terminationGracePeriodSeconds": INT,
    "tolerations": List({"key": STR, "operator": STR, "value": STR, "effect": STR}),
    "securityContext": POD_SECURITY_CONTEXT,
    "hostNetwork": BOOL,
    "hostPID": BOOL,
    "hostIPC": BOOL,
    "hostname": STR,
    "subdomain": STR,
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": List(
                {
                    "weight": INT,
                    "preference": {
                        "matchExpressions": List({"key": STR, "operator": STR, "values": List(STR)}),
                        "matchFields": List({"key": STR, "operator": STR, "values": List(STR)}),
                    },
                }
            ),
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": List(
                    {
                        "matchExpressions": List({"key": STR, "operator": STR, "values": List(STR)}),
                        "matchFields": List({"key": STR, "operator": STR, "values": List(STR)}),
                    }
                )
            },
        }
    },
}
JOB = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": OBJECT_META,
    "spec": {
        "template": {"metadata": OBJECT_META, "spec": POD_SPEC},
        "backoffLimit": INT,
        "activeDeadlineSeconds": INT,
        "ttlSecondsAfterFinished": INT,
        "suspend": BOOL,
        "completions": INT,
        "parallelism": INT,
        "completionMode": STR,
        "backoffLimitPerIndex": INT,
        "maxFailedIndexes": INT,
        "podFailurePolicy": {
            "rules": List(
                {
                    "action": STR,
                    "onExitCodes": {"containerName": STR, "operator": STR, "values": List(INT)},
                    "onPodConditions": List({"type": STR, "status": STR}),
                }
            )
        },
        "manualSelector": BOOL,
        "podReplacementPolicy": STR,
        "selector": {"matchLabels": Map(STR)},
    },
    "status": ANY,
}
SERVICE = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": OBJECT_META,
    "spec": {
        "clusterIP": STR,
        "type": STR,
        "selector": Map(STR),
        "publishNotReadyAddresses": BOOL,
        "ports": List({"name": STR, "protocol": STR, "port": INT, "targetPort": INT_OR_STR}),
    },
    "status": ANY,
}
NAMESPACE = {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META, "spec": ANY, "status": ANY}
SECRET = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": OBJECT_META,
    "type": STR,
    "immutable": BOOL,
    "data": Map(STR),  # []byte values: base64 in JSON
    "stringData": Map(STR),
}
RESOURCE_QUOTA = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": OBJECT_META,
    "spec": {"hard": Map(QTY), "scopes": List(STR)},
    "status": ANY,
}
LABEL_SELECTOR = {
    "matchLabels": Map(STR),
    "matchExpressions": List({"key": STR, "operator": STR, "values": List(STR)}),
}
POLICY_PEER = {
    "podSelector": LABEL_SELECTOR,
    "namespaceSelector": LABEL_SELECTOR,
    "ipBlock": {"cidr": STR, "except": List(STR)},
}
POLICY_PORT = {"protocol": STR, "port": INT_OR_STR, "endPort": INT}
NETWORK_POLICY = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": OBJECT_META,
    "spec": {
        "podSelector": LABEL_SELECTOR,
        "policyTypes": List(STR),
        "ingress": List({"from": List(POLICY_PEER), "ports": List(POLICY_PORT)}),
        "egress": List({"to": List(POLICY_PEER), "ports": List(POLICY_PORT)}),
    },
}
# The Go struct that holds a field, by the JSON path of its parent (without list indices): the
# decoder names it in type errors ("Go struct field JobSpec.spec.backoffLimit of type int32").
GO_STRUCTS = {
    "metadata": "ObjectMeta",
    "spec": "JobSpec",
    "spec.selector": "LabelSelector",
    "spec.template": "PodTemplateSpec",
    "spec.template.metadata": "ObjectMeta",
    "spec.template.spec": "PodSpec",
    "spec.template.spec.containers": "Container",
    "spec.template.spec.containers.env": "EnvVar",
    "spec.template.spec.containers.envFrom": "EnvFromSource",
    "metadata.ownerReferences": "OwnerReference",
    "spec.template.spec.containers.resources": "ResourceRequirements",
    "spec.template.spec.tolerations": "Toleration",
    "spec.template.spec.securityContext": "PodSecurityContext",
    "spec.template.spec.affinity": "Affinity",
    "spec.template.spec.affinity.nodeAffinity": "NodeAffinity",
    "spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution": (
        "PreferredSchedulingTerm"
    ),
    "spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution.preference": (
        "NodeSelectorTerm"
    ),
    "spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution.preference"
    ".matchExpressions": "NodeSelectorRequirement",
    "spec.podFailurePolicy": "PodFailurePolicy",
    "spec.podFailurePolicy.rules": "PodFailurePolicyRule",
    "spec.podFailurePolicy.rules.onExitCodes": "PodFailurePolicyOnExitCodesRequirement",
    "spec.template.spec.containers.env.valueFrom": "EnvVarSource",
    "spec.template.spec.containers.env.valueFrom.fieldRef": "ObjectFieldSelector",
    "spec.template.spec.containers.securityContext": "SecurityContext",
    "spec.template.spec.containers.securityContext.capabilities": "Capabilities",
    "spec.hard": "ResourceQuotaSpec",
    "spec.ingress": "NetworkPolicyIngressRule",
    "spec.egress": "NetworkPolicyEgressRule",
    "spec.egress.ports": "NetworkPolicyPort",
    "spec.ingress.ports": "NetworkPolicyPort",
}


def decode(kind: str, body: Any, schema: dict, validation: str) -> tuple[dict, list[str]]:
    """Check types like the API server's JSON decoder; returns the object without unknown fields
    and the warnings for them. Strict field validation turns unknown fields into a 400."""
    unknown: list[str] = []
    cleaned = _decode(kind, body, schema, "", unknown)
    if unknown and validation == "Strict":
        raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))
    warnings = [] if validation == "Ignore" else [f'299 - "unknown field \\"{u}\\""' for u in unknown]
    return cleaned, warnings


def _decode(kind: str, value: Any, schema: Any, path: str, unknown: list[str]) -> Any:
    if schema == ANY:
        return value
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            _type_error(kind, value, path, "object")
        out = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key not in schema:
                unknown.append(sub)
                continue
            out[key] = _decode(kind, item, schema[key], sub, unknown)
        return out
    if isinstance(schema, tuple):
        container, inner = schema
        if value is None:
            return None
        if container == "map":
            if not isinstance(value, dict):
                _type_error(kind, value, path, "map[string]string")
            return {k: _decode(kind, v, inner, f"{path}[{k}]", unknown) for k, v in value.items()}
        if not isinstance(value, list):
            _type_error(kind, value, path, "[]")
        return [_decode(kind, v, inner, f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    if schema == STR and not isinstance(value, str):
        _type_error(kind, value, path, "string")
    if schema in (INT, INT64) and (isinstance(value, bool) or not isinstance(value, int)):
        _type_error(kind, value, path, schema)
    if schema == INT_OR_STR and (isinstance(value, bool) or not isinstance(value, int | str)):
        _type_error(kind, value, path, "intstr.IntOrString")
    if schema == BOOL and not isinstance(value, bool):
        _type_error(kind, value, path, "bool")
    if schema == QTY:
        # A Quantity decodes from a JSON string or number, and must parse.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            _type_error(kind, value, path, "resource.Quantity")
        if not QUANTITY.fullmatch(str(value)):
            raise bad_request(
                f'{kind} in version "v1" cannot be handled as a {kind}: quantities must match the '
                "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            )
    return value


def _type_error(kind: str, value: Any, path: str, go_type: str) -> None:
    json_type = {bool: "bool", str: "string", int: "number", float: "number", list: "array", dict: "object"}
    got = json_type.get(type(value), "null")
    plain = re.sub(r"\[[^]]*\]", "", path)
    parent = plain.rpartition(".")[0]
    struct = GO_STRUCTS.get(parent, kind) if "." in plain else kind
    raise bad_request(
        f'{kind} in version "v1" cannot be handled as a {kind}: json: cannot unmarshal {got} into Go '
        f"struct field {struct}.{plain} of type {go_type}"
    )


# --- field selectors (every resource supports metadata.name and metadata.namespace) --------------

_FIELD = re.compile(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*([^,]*?)\s*$")
FIELDS = ("metadata.name", "metadata.namespace")


def parse_fields(text: str) -> Callable[[dict], bool]:
    requirements = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _FIELD.match(part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part.strip()}'")
        name, op, value = match.groups()
        if name not in FIELDS:
            raise bad_request(
                f'"{name}" is not a known field selector: only "metadata.name", "metadata.namespace"'
            )
        key = name.partition(".")[2]
        requirements.append(lambda obj, k=key, v=value, neg=op == "!=": (obj["metadata"].get(k) == v) != neg)
    return lambda obj: all(req(obj) for req in requirements)


# --- label selectors ------------------------------------------------------------------------------

_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*$")
_EQUALS = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_SET = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse_selector(text: str) -> Callable[[dict[str, str]], bool]:
    requirements = []
    for part in _split_requirements(text):
        if match := _SET.match(part):
            key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",") if v.strip()}
            if op == "in":
                requirements.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                requirements.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif match := _EQUALS.match(part):
            key, op, value = match[1], match[2], match[3]
            if op == "!=":
                requirements.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                requirements.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif match := _EXISTS.match(part):
            negate, key = bool(match[1]), match[2]
            requirements.append(lambda labels, k=key, n=negate: (k in labels) != n)
        else:
            raise bad_request(f"unable to parse requirement: found '{part.strip()}'")
    return lambda labels: all(req(labels or {}) for req in requirements)


def _split_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


# --- patches ------------------------------------------------------------------------------------

MERGE_PATCHES = ("application/strategic-merge-patch+json", "application/merge-patch+json")


def merge_patch(target: Any, patch: Any) -> Any:
    """A merge patch (RFC 7386): maps merge, null removes a key, anything else replaces. For the
    maps of string labels the adapter patches, a strategic merge patch does the same."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


# --- validation of the other objects the adapter writes ------------------------------------------

LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
STANDARD_QUOTA_RESOURCES = frozenset(
    {
        "pods",
        "services",
        "replicationcontrollers",
        "resourcequotas",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "services.nodeports",
        "services.loadbalancers",
        "cpu",
        "memory",
        "ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.storage",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
    }
)
PROTOCOLS = ["TCP", "UDP", "SCTP"]
POLICY_TYPES = ["Ingress", "Egress"]


def meta_errors(meta: dict) -> list[FieldError]:
    errors = []
    name = meta.get("name", "")
    if not name:
        errors.append(required("metadata.name", "name or generateName is required"))
    elif not DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        errors.append(
            invalid_value(
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                "'.', and must start and end with an alphanumeric character",
            )
        )
    return errors + label_errors("metadata.labels", meta.get("labels") or {})


def label_errors(path: str, labels: dict[str, str]) -> list[FieldError]:
    errors = []
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            errors.append(
                invalid_value(
                    path,
                    key,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
                    "and end with an alphanumeric character",
                )
            )
        if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            errors.append(
                invalid_value(
                    path,
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', "
                    "'_' or '.', and must start and end with an alphanumeric character",
                )
            )
    return errors


def validate_quota(quota: dict) -> list[FieldError]:
    """ValidateResourceQuotaSpec's rules on `hard`: quota resource names, and quantities that are
    not negative, whole for extended resources."""
    errors = []
    for key, value in ((quota.get("spec") or {}).get("hard") or {}).items():
        path = f"spec.hard[{key}]"
        if "/" not in key and key not in STANDARD_QUOTA_RESOURCES:
            errors.append(invalid_value(path, key, "must be a standard resource for quota"))
        elif "/" in key and not LABEL_KEY.fullmatch(key):
            errors.append(invalid_value(path, key, "must be a standard resource type or fully qualified"))
        text = str(value)
        if text.startswith("-"):
            errors.append(invalid_value(path, text, "must be greater than or equal to 0"))
        elif "/" in key and not re.fullmatch(r"\d+", text):
            errors.append(invalid_value(path, text, "must be an integer"))
    return errors


SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_SECRET_BYTES = 1024 * 1024


def validate_secret(secret: dict) -> list[FieldError]:
    """ValidateSecret's rules: keys of `data` (after `stringData` is folded in) are config keys,
    values base64 (a decode error in a real server), the whole at most 1 MiB."""
    errors, total = [], 0
    for key, value in (secret.get("data") or {}).items():
        if not SECRET_KEY.fullmatch(key) or len(key) > 253:
            errors.append(
                invalid_value(
                    "data", key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
                )
            )
        try:
            total += len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at {key}'
            ) from None
    if total > MAX_SECRET_BYTES:
        errors.append(invalid_value("data", "", f"Too long: may not be more than {MAX_SECRET_BYTES} bytes"))
    if secret.get("type", "Opaque") != "Opaque":
        errors.append(not_supported("type", secret["type"], ["Opaque"]))
    return errors


def fold_string_data(secret: dict) -> None:
    """What the API server stores of a Secret: `stringData` written into `data`, then dropped."""
    for key, value in (secret.pop("stringData", None) or {}).items():
        secret.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
    secret.setdefault("type", "Opaque")


def validate_policy(policy: dict) -> list[FieldError]:
    """ValidateNetworkPolicySpec: ports, peers (at least one kind; ipBlock alone), ipBlocks whose
    exceptions lie strictly inside their CIDR, and policy types."""
    spec = policy.get("spec") or {}
    errors: list[FieldError] = []
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            path = f"spec.{direction}[{i}]"
            for j, port in enumerate(rule.get("ports") or []):
                protocol, number = port.get("protocol"), port.get("port")
                if protocol is not None and protocol not in PROTOCOLS:
                    errors.append(not_supported(f"{path}.ports[{j}].protocol", protocol, PROTOCOLS))
                if isinstance(number, int) and not 1 <= number <= 65535:
                    errors.append(
                        invalid_value(
                            f"{path}.ports[{j}].port", number, "must be between 1 and 65535, inclusive"
                        )
                    )
            for j, peer in enumerate(rule.get(peers) or []):
                where = f"{path}.{peers}[{j}]"
                kinds = [
                    k for k in ("podSelector", "namespaceSelector", "ipBlock") if peer.get(k) is not None
                ]
                if not kinds:
                    errors.append(required(where, "must specify a peer"))
                elif len(kinds) > 1 and "ipBlock" in kinds:
                    errors.append(forbidden_value(where, "may not specify both ipBlock and another peer"))
                if peer.get("ipBlock") is not None:
                    errors += _ip_block_errors(f"{where}.ipBlock", peer["ipBlock"])
    for i, kind in enumerate(spec.get("policyTypes") or []):
        if kind not in POLICY_TYPES:
            errors.append(not_supported(f"spec.policyTypes[{i}]", kind, POLICY_TYPES))
    return errors


def _ip_block_errors(path: str, block: dict) -> list[FieldError]:
    cidr = block.get("cidr", "")
    if not cidr:
        return [required(f"{path}.cidr")]
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return [
            invalid_value(
                f"{path}.cidr", cidr, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            )
        ]
    errors = []
    for i, text in enumerate(block.get("except") or []):
        try:
            inner = ipaddress.ip_network(text, strict=False)
        except ValueError:
            errors.append(invalid_value(f"{path}.except[{i}]", text, "must be a valid CIDR value"))
            continue
        if inner.version != network.version or not inner.subnet_of(network) or inner == network:
            errors.append(invalid_value(f"{path}.except[{i}]", text, "must be a strict subset of `cidr`"))
    return errors


def default_policy(policy: dict) -> None:
    """SetDefaults_NetworkPolicy: TCP for a port without a protocol; the policy types from the
    rules when none are given."""
    spec = policy.setdefault("spec", {})
    spec.setdefault("podSelector", {})
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", *(["Egress"] if spec.get("egress") else [])]


# --- Pod Security admission -----------------------------------------------------------------------


def pod_security_violations(pod: dict, level: str) -> list[str]:
    """What Pod Security admission finds wrong with a pod spec at a level ("privileged",
    "baseline", "restricted"), in its words and order: the checks a job's pod can run into."""
    if level not in ("baseline", "restricted"):
        return []
    pod_context = pod.get("securityContext") or {}
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]

    def context(container: dict) -> dict:
        return container.get("securityContext") or {}

    found = []
    hosts = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    if hosts:
        found.append(f"host namespaces ({', '.join(hosts)})")
    privileged = [c["name"] for c in containers if context(c).get("privileged")]
    if privileged:
        found.append(f"privileged ({_containers(privileged)} must not set securityContext.privileged=true)")
    if level == "baseline":
        return found
    escalating = [c["name"] for c in containers if context(c).get("allowPrivilegeEscalation") is not False]
    if escalating:
        found.append(
            f"allowPrivilegeEscalation != false ({_containers(escalating)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    capabilities = []
    undropped = [
        c["name"] for c in containers if "ALL" not in (context(c).get("capabilities") or {}).get("drop", [])
    ]
    if undropped:
        capabilities.append(f'{_containers(undropped)} must set securityContext.capabilities.drop=["ALL"]')
    for c in containers:
        added = [
            cap for cap in (context(c).get("capabilities") or {}).get("add", []) if cap != "NET_BIND_SERVICE"
        ]
        if added:
            listed = ", ".join(f'"{cap}"' for cap in added)
            capabilities.append(
                f'container "{c["name"]}" must not include {listed} in securityContext.capabilities.add'
            )
    if capabilities:
        found.append(f"unrestricted capabilities ({'; '.join(capabilities)})")
    non_root = []
    if pod_context.get("runAsNonRoot") is False:
        non_root.append("pod must not set securityContext.runAsNonRoot=false")
    explicit = [c["name"] for c in containers if context(c).get("runAsNonRoot") is False]
    if explicit:
        non_root.append(f"{_containers(explicit)} must not set securityContext.runAsNonRoot=false")
    if pod_context.get("runAsNonRoot") is not True:
        unset = [c["name"] for c in containers if context(c).get("runAsNonRoot") is None]
        if unset:
            non_root.append(f"pod or {_containers(unset)} must set securityContext.runAsNonRoot=true")
    if non_root:
        found.append(f"runAsNonRoot != true ({'; '.join(non_root)})")
    root = ["pod must not set runAsUser=0"] if pod_context.get("runAsUser") == 0 else []
    root_containers = [c["name"] for c in containers if context(c).get("runAsUser") == 0]
    if root_containers:
        root.append(f"{_containers(root_containers)} must not set runAsUser=0")
    if root:
        found.append(f"runAsUser=0 ({'; '.join(root)})")
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (pod_context.get("seccompProfile") or {}).get("type")
    seccomp = []
    if pod_type is not None and pod_type not in allowed:
        seccomp.append(f'pod must not set securityContext.seccompProfile.type to "{pod_type}"')
    for c in containers:
        kind = (context(c).get("seccompProfile") or {}).get("type")
        if kind is not None and kind not in allowed:
            seccomp.append(
                f'container "{c["name"]}" must not set securityContext.seccompProfile.type to "{kind}"'
            )
    if pod_type not in allowed:
        unset = [
            c["name"] for c in containers if (context(c).get("seccompProfile") or {}).get("type") is None
        ]
        if unset:
            seccomp.append(
                f"pod or {_containers(unset)} must set securityContext.seccompProfile.type to "
                '"RuntimeDefault" or "Localhost"'
            )
    if seccomp:
        found.append(f"seccompProfile ({'; '.join(seccomp)})")
    return found


def _containers(names: list[str]) -> str:
    quoted = ", ".join(f'"{name}"' for name in names)
    return f"container {quoted}" if len(names) == 1 else f"containers {quoted}"


def pod_security_level(namespace: dict, mode: str) -> tuple[str, str]:
    """(level, "level:version") of a namespace's Pod Security label for a mode
    (enforce, warn, audit); unlabelled namespaces are privileged."""
    labels = namespace["metadata"].get("labels") or {}
    level = labels.get(f"{POD_SECURITY}{mode}", "privileged")
    return level, f"{level}:{labels.get(f'{POD_SECURITY}{mode}-version', 'latest')}"


# --- the fake -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A namespaced kind the fake stores generically: ResourceQuotas and NetworkPolicies."""

    kind: str
    resource: str
    group: str  # "" for the core group
    api_version: str
    schema: dict
    validate: Callable[[dict], list[FieldError]]
    return_deleted: bool  # a delete answers the object (ResourceQuota), else a Status
    generation: bool  # metadata.generation counts spec changes


QUOTAS = Resource("ResourceQuota", "resourcequotas", "", "v1", RESOURCE_QUOTA, validate_quota, True, False)
SECRETS = Resource("Secret", "secrets", "", "v1", SECRET, validate_secret, False, False)
POLICIES = Resource(
    "NetworkPolicy",
    "networkpolicies",
    "networking.k8s.io",
    "networking.k8s.io/v1",
    NETWORK_POLICY,
    validate_policy,
    False,
    True,
)
SERVICES = Resource(
    "Service", "services", "", "v1", SERVICE, lambda service: validate_service(service), True, False
)
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_service(service: dict) -> list[FieldError]:
    """ValidateService's rules the adapter can run into: a DNS-1035 name, ports unless headless,
    valid selector values, a known type."""
    errors = []
    name = (service.get("metadata") or {}).get("name", "")
    if name and (not DNS_1035.fullmatch(name) or len(name) > 63):
        errors.append(
            invalid_value(
                "metadata.name",
                name,
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
                "with an alphabetic character, and end with an alphanumeric character",
            )
        )
    spec = service.get("spec") or {}
    if spec.get("clusterIP") != "None" and not spec.get("ports"):
        errors.append(required("spec.ports"))
    if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errors.append(
            not_supported(
                "spec.type", spec["type"], ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
            )
        )
    errors += label_errors("spec.selector", spec.get("selector") or {})
    return errors


def default_service(service: dict) -> None:
    spec = service["spec"]
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("clusterIP") == "None":
        spec["clusterIPs"] = ["None"]
    else:
        spec["clusterIP"] = "10.96.0.42"
        spec["clusterIPs"] = ["10.96.0.42"]
    spec.update(ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack", internalTrafficPolicy="Cluster")
    service["status"] = {"loadBalancer": {}}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(repr=False, default_factory=dict)


class FakeKubernetes:
    """A threaded HTTP server on 127.0.0.1 holding namespaces, Jobs, pods, logs, nodes,
    ResourceQuotas and NetworkPolicies."""

    def __init__(self, *, delay_terminal_condition: bool = True) -> None:
        # Recent servers write SuccessCriteriaMet/FailureTarget before Complete/Failed.
        self.delay_terminal_condition = delay_terminal_condition
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.namespaces: dict[str, dict] = {}
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.logs: dict[tuple[str, str], bytes] = {}
        self.nodes: dict[str, dict] = {}
        # Kueue's topology assignments: the node selector of the domain each Job's pods go to.
        self.topology_assignments: dict[tuple[str, str], dict[str, str]] = {}
        self.objects: dict[str, dict[tuple[str, str], dict]] = {
            QUOTAS.resource: {},
            POLICIES.resource: {},
            SECRETS.resource: {},
            SERVICES.resource: {},
        }
        self.warnings: list[str] = []  # every Warning header sent, for tests to read
        self.forbidden: set[tuple[str, str]] = set()
        self.failing: int | None = None
        self._version = itertools.count(1000)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.namespaces[name] = self._namespace_object(name, {})

    # --- serving ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_server(self) -> FakeKubernetes:
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def kubeconfig(self, *, token: str = TOKEN) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "portal", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "portal"}}],
            "current-context": "fake",
        }

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """Nothing listens on the port meanwhile: connections are refused."""
        self.stop_server()
        try:
            yield
        finally:
            self.start_server()

    @contextlib.contextmanager
    def outage(self, code: int = 503) -> Iterator[None]:
        """The server answers every request with an error Status (an overloaded API server)."""
        self.failing = code
        try:
            yield
        finally:
            self.failing = None

    def forbid(self, verb: str, resource: str) -> None:
        self.forbidden.add((verb, resource))

    # --- what the tests look at ---------------------------------------------------------------

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def reset_calls(self) -> None:
        with self.lock:
            self.requests.clear()

    def job(self, external_id: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.jobs[_key(external_id)])

    @property
    def quotas(self) -> dict[tuple[str, str], dict]:
        return self.objects[QUOTAS.resource]

    @property
    def policies(self) -> dict[tuple[str, str], dict]:
        return self.objects[POLICIES.resource]

    @property
    def secrets(self) -> dict[tuple[str, str], dict]:
        return self.objects[SECRETS.resource]

    @property
    def services(self) -> dict[tuple[str, str], dict]:
        return self.objects[SERVICES.resource]

    def quota(self, namespace: str, name: str) -> dict:
        """A ResourceQuota as a read answers it (its status as the quota controller writes it)."""
        with self.lock:
            return self._quota_view(self.quotas[(namespace, name)])

    def pods_of(self, external_id: str) -> list[dict]:
        namespace, name = _key(external_id)
        with self.lock:
            return [
                copy.deepcopy(p)
                for (ns, _), p in self.pods.items()
                if ns == namespace and p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == name
            ]

    # --- nodes --------------------------------------------------------------------------------

    def add_node(
        self, name: str, labels: dict[str, str], gpus: int, *, ready: bool = True, unschedulable: bool = False
    ) -> None:
        capacity = {"cpu": "64", "memory": "1056762036Ki", "pods": "110", "ephemeral-storage": "1Ti"}
        if gpus:
            capacity[GPU] = str(gpus)
        node = {
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": now(),
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **labels},
            },
            "spec": {"podCIDR": "10.244.1.0/24", **({"unschedulable": True} if unschedulable else {})},
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "KubeletReady" if ready else "KubeletNotReady",
                        "message": "kubelet is posting ready status" if ready else "container runtime down",
                        "lastHeartbeatTime": now(),
                        "lastTransitionTime": now(),
                    }
                ],
            },
        }
        with self.lock:
            self.nodes[name] = node

    # --- the job controller, driven by the test -----------------------------------------------

    def start(self, external_id: str, *, ready: bool = True) -> None:
        """The controller creates the pod; `ready=False` leaves it Pending (no node, no image).
        When admission refuses the pod (its namespace's Pod Security level or GPU quota), this
        raises the ApiError the controller gets (a real one records it in a FailedCreate event
        and tries again) and the Job is left as it was."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            assert not job["spec"].get("suspend"), "a suspended Job does not start"
            # An Indexed Job gets one pod per index, all at once (its parallelism is its completions).
            indexes = range(job["spec"]["parallelism"]) if _indexed(job) else [None]
            pods = [self._create_pod(job, running=ready, index=index) for index in indexes]
            status = job["status"]
            status.setdefault("startTime", now())
            count = len(pods)
            status.update(
                active=count, ready=count if ready else 0, terminating=0, uncountedTerminatedPods={}
            )
            self._write_status(job)
            for pod in pods:
                self.logs.setdefault((job["metadata"]["namespace"], pod["metadata"]["name"]), b"")

    def write_rank_log(self, external_id: str, index: int, text: str) -> None:
        """Output of one index's pod (a gang's rank)."""
        with self.lock:
            for pod in self.pods_of(external_id):
                if pod["metadata"]["annotations"].get(COMPLETION_INDEX) == str(index):
                    self.logs[(pod["metadata"]["namespace"], pod["metadata"]["name"])] += text.encode()

    def fail_index(self, external_id: str, index: int, *, exit_code: int) -> None:
        """One index's container exits non-zero. Under a FailJob rule of the Job's pod failure
        policy that matches, the Job fails at once with reason PodFailurePolicy; else the backoff
        limit (0 here) fails it. Either way the controller deletes the other pods, which end
        terminated (exit code 143)."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            pods = self._job_pods(job)
            failing = next(
                p for p in pods if p["metadata"]["annotations"].get(COMPLETION_INDEX) == str(index)
            )
            self._end_pod(failing, exit_code)
            # Stopped after it: SIGTERM, a grace period later.
            later = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for pod in pods:
                if pod is not failing:
                    self._end_pod(pod, 143, finished_at=later)
            status = job["status"]
            status.pop("active", None)
            status.update(ready=0, failed=len(pods), terminating=0, uncountedTerminatedPods={})
            rule = _fail_job_rule(job, failing["spec"]["containers"][0]["name"], exit_code)
            if rule is not None:
                pod_name = f"{failing['metadata']['namespace']}/{failing['metadata']['name']}"
                outcome = (
                    "PodFailurePolicy",
                    f"Container {failing['spec']['containers'][0]['name']} for pod {pod_name} failed "
                    f"with exit code {exit_code} matching FailJob rule at index {rule}",
                )
            else:
                outcome = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            self._decide(job, "FailureTarget", "Failed", outcome, True)

    def write_log(self, external_id: str, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        with self.lock:
            for pod in self.pods_of(external_id):
                self.logs[(pod["metadata"]["namespace"], pod["metadata"]["name"])] += data

    def succeed(self, external_id: str, *, log: str = "", finished: bool = True) -> None:
        """The container exits 0. `finished=False` stops after SuccessCriteriaMet (recent servers:
        the pods still terminate); `finish()` then writes Complete."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            if log:
                self.write_log(external_id, log)
            self._end_pods(job, exit_code=0)
            status = job["status"]
            status.pop("active", None)
            succeeded = len(self._job_pods(job)) or 1
            status.update(ready=0, succeeded=succeeded, terminating=0, uncountedTerminatedPods={})
            if _indexed(job):
                status["completedIndexes"] = "0" if succeeded == 1 else f"0-{succeeded - 1}"
            outcome = ("CompletionsReached", "Reached expected number of succeeded pods")
            self._decide(job, "SuccessCriteriaMet", "Complete", outcome, finished)

    def fail(self, external_id: str, *, exit_code: int = 1, log: str = "", finished: bool = True) -> None:
        """The container exits non-zero; with backoffLimit 0 that fails the Job."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            if log:
                self.write_log(external_id, log)
            self._end_pods(job, exit_code=exit_code)
            status = job["status"]
            status.pop("active", None)
            status.update(ready=0, failed=1, terminating=0, uncountedTerminatedPods={})
            outcome = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            self._decide(job, "FailureTarget", "Failed", outcome, finished)

    def evict(self, external_id: str) -> None:
        """The kubelet evicts the running pod (node pressure): the pod fails with reason Evicted
        and a DisruptionTarget condition, its container killed; with backoffLimit 0 that fails
        the Job."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            self._end_pods(job, exit_code=137)
            for pod in self._job_pods(job):
                pod["status"].update(reason="Evicted", message="The node was low on resource: memory.")
                pod["status"].setdefault("conditions", []).append(
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "TerminationByKubelet",
                        "message": "The node was low on resource: memory.",
                        "lastTransitionTime": now(),
                    }
                )
            status = job["status"]
            status.pop("active", None)
            status.update(ready=0, failed=1, terminating=0, uncountedTerminatedPods={})
            outcome = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            self._decide(job, "FailureTarget", "Failed", outcome, True)

    def deadline_exceeded(self, external_id: str) -> None:
        """activeDeadlineSeconds passed: the controller deletes the pods and fails the Job."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            self._delete_pods_of(job)
            status = job["status"]
            status.pop("active", None)
            status.update(ready=0, failed=1, terminating=0, uncountedTerminatedPods={})
            outcome = ("DeadlineExceeded", "Job was active longer than specified deadline")
            self._decide(job, "FailureTarget", "Failed", outcome, True)

    def finish(self, external_id: str) -> None:
        """Write the terminal condition after SuccessCriteriaMet / FailureTarget (pods gone)."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            types = {c["type"] for c in job["status"].get("conditions", [])}
            if "SuccessCriteriaMet" in types:
                self._add_condition(job, "Complete", *self._outcome_of(job, "SuccessCriteriaMet"))
                job["status"]["completionTime"] = now()
            else:
                self._add_condition(job, "Failed", *self._outcome_of(job, "FailureTarget"))
            self._write_status(job)

    def kueue_admit(self, external_id: str) -> bool:
        """Kueue admits the Workload and unsuspends the Job; the controller resumes it. With
        topology-aware scheduling, the pods go within one domain (see the module's doc); a
        required topology no domain has room for leaves it suspended: returns whether admitted."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            placement = self._topology_placement(job)
            if placement is None:
                return False
            if placement:
                self.topology_assignments[_key(external_id)] = placement
            job["spec"]["suspend"] = False
            job["metadata"]["generation"] += 1
            self._set_condition(job, "Suspended", "False", "JobResumed", "Job resumed")
            job["status"]["startTime"] = now()  # resuming resets startTime
            self._write_status(job)
        self.start(external_id)
        return True

    def _topology_placement(self, job: dict) -> dict[str, str] | None:
        """The node selector of the domain Kueue puts a topology-aware Job's pods in ({} if it
        asks for none; None if it requires one and no domain has room for all its pods): of the
        domains with room, the one with the least."""
        annotations = job["spec"]["template"]["metadata"].get("annotations") or {}
        level = annotations.get(KUEUE_REQUIRED_TOPOLOGY) or annotations.get(KUEUE_PREFERRED_TOPOLOGY)
        if not level:
            return {}
        pods = job["spec"].get("parallelism") or 1
        limits = job["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        gpus = int(limits.get(GPU, "0"))
        selector = job["spec"]["template"]["spec"].get("nodeSelector") or {}
        room: dict[str, int] = {}
        for node in self.nodes.values():
            labels = node["metadata"]["labels"]
            fits = int(node["status"]["allocatable"].get(GPU, "0")) >= gpus
            if level in labels and fits and all(labels.get(k) == v for k, v in selector.items()):
                room[labels[level]] = room.get(labels[level], 0) + 1
        fitting = sorted((count, domain) for domain, count in room.items() if count >= pods)
        if fitting:
            return {level: fitting[0][1]}
        return None if KUEUE_REQUIRED_TOPOLOGY in annotations else {}

    def kueue_preempt(self, external_id: str) -> None:
        """Kueue evicts the Workload and suspends the Job again: its pods are deleted."""
        with self.lock:
            job = self.jobs[_key(external_id)]
            job["spec"]["suspend"] = True
            job["metadata"]["generation"] += 1
            self._delete_pods_of(job)
            status = job["status"]
            status.pop("active", None)
            status.update(ready=0, terminating=0)
            self._set_condition(job, "Suspended", "True", "JobSuspended", "Job suspended")
            self._write_status(job)

    def expire(self, external_id: str) -> None:
        """The TTL controller deletes a finished Job (and, in the foreground, its pods)."""
        with self.lock:
            job = self.jobs.pop(_key(external_id))
            self._delete_pods_of(job)
            self._collect_dependents(job)

    # --- internals of the controller ----------------------------------------------------------

    def _decide(
        self, job: dict, decided: str, terminal: str, outcome: tuple[str, str], finished: bool
    ) -> None:
        if self.delay_terminal_condition:
            self._add_condition(job, decided, *outcome)
            if finished:
                self._add_condition(job, terminal, *outcome)
        else:
            self._add_condition(job, terminal, *outcome)
        if terminal == "Complete" and (finished or not self.delay_terminal_condition):
            job["status"]["completionTime"] = now()
        self._write_status(job)

    def _outcome_of(self, job: dict, condition: str) -> tuple[str, str]:
        for c in job["status"]["conditions"]:
            if c["type"] == condition:
                return c["reason"], c["message"]
        raise AssertionError(f"no {condition} condition to finish from")

    def _add_condition(self, job: dict, type_: str, reason: str, message: str) -> None:
        job["status"].setdefault("conditions", []).append(
            {
                "type": type_,
                "status": "True",
                "lastProbeTime": now(),
                "lastTransitionTime": now(),
                "reason": reason,
                "message": message,
            }
        )

    def _set_condition(self, job: dict, type_: str, status: str, reason: str, message: str) -> None:
        conditions = job["status"].setdefault("conditions", [])
        for condition in conditions:
            if condition["type"] == type_:
                if condition["status"] != status:
                    condition["lastTransitionTime"] = now()
                condition.update(status=status, reason=reason, message=message, lastProbeTime=now())
                return
        self._add_condition(job, type_, reason, message)
        conditions[-1]["status"] = status

    def _write_status(self, job: dict) -> None:
        problems = status_problems(job["status"], delayed=self.delay_terminal_condition)
        assert not problems, f"the API server would refuse this status: {problems}"
        job["metadata"]["resourceVersion"] = self._next_version()

    def _create_pod(self, job: dict, *, running: bool, index: int | None = None) -> dict:
        meta = job["metadata"]
        indexed = f"-{index}" if index is not None else ""
        name = f"{meta['name']}{indexed}-{secrets.token_hex(3)[:5]}"
        spec = copy.deepcopy(job["spec"]["template"]["spec"])
        if index is not None:
            spec["hostname"] = f"{meta['name']}-{index}"  # with the subdomain: its DNS name
        self._admit_pod(meta["namespace"], name, spec)
        assigned = self.topology_assignments.get((meta["namespace"], meta["name"]), {})
        if assigned:
            spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **assigned}
        spec["nodeName"] = self._node_for(spec.get("nodeSelector") or {}, index or 0, _preferred(spec))
        container = spec["containers"][0]
        started = now()
        missing = self._missing_secret(meta["namespace"], container)
        if missing:
            running = False
            state = {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": f'secret "{missing}" not found',
                }
            }
        elif running:
            state = {"running": {"startedAt": started}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        pod = {
            "metadata": {
                "name": name,
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": started,
                "labels": {
                    **job["spec"]["template"]["metadata"]["labels"],
                    **({COMPLETION_INDEX: str(index)} if index is not None else {}),
                },
                "annotations": {COMPLETION_INDEX: str(index)} if index is not None else {},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "finalizers": [TRACKING_FINALIZER],
            },
            "spec": spec,
            "status": {
                "phase": "Running" if running else "Pending",
                "hostIP": "10.0.0.11",
                "podIP": "10.244.1.17",
                "startTime": started,
                "qosClass": "Guaranteed",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": f"{container['image'].partition(':')[0]}@sha256:{'ab' * 32}"
                        if running
                        else "",
                        "containerID": f"containerd://{secrets.token_hex(32)}" if running else None,
                        "ready": running,
                        "restartCount": 0,
                        "started": running,
                        "state": state,
                    }
                ],
            },
        }
        if pod["status"]["containerStatuses"][0]["containerID"] is None:
            del pod["status"]["containerStatuses"][0]["containerID"]
        self.pods[(meta["namespace"], name)] = pod
        return pod

    def _missing_secret(self, namespace: str, container: dict) -> str:
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref and not ref.get("optional") and (namespace, ref.get("name")) not in self.secrets:
                return ref.get("name", "")
        return ""

    def _collect_dependents(self, owner: dict) -> None:
        """The garbage collector: objects whose ownerReferences name a deleted owner go too."""
        uid = owner["metadata"]["uid"]
        for store in self.objects.values():
            for key in [k for k, obj in store.items() if _owned_by(obj, uid)]:
                del store[key]

    def _orphan_dependents(self, owner: dict) -> None:
        uid = owner["metadata"]["uid"]
        for store in self.objects.values():
            for obj in store.values():
                refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                if refs:
                    obj["metadata"]["ownerReferences"] = refs
                else:
                    obj["metadata"].pop("ownerReferences", None)

    def _admit_pod(self, namespace: str, name: str, spec: dict) -> None:
        """The admission plugins a job's pod meets: Pod Security (the namespace's enforce level),
        then ResourceQuota (requests.nvidia.com/gpu against every quota of the namespace)."""
        level, shown = pod_security_level(self.namespaces[namespace], "enforce")
        violations = pod_security_violations(spec, level)
        if violations:
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: violates PodSecurity "{shown}": {", ".join(violations)}',
                {"name": name, "kind": "pods"},
            )
        requested = sum(_gpus(c) for c in spec.get("containers") or [])
        used = self._gpus_used(namespace)
        for (ns, quota_name), quota in sorted(self.quotas.items()):
            hard = (quota["spec"].get("hard") or {}).get(GPU_QUOTA)
            if ns == namespace and hard is not None and requested and used + requested > int(hard):
                raise ApiError(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: exceeded quota: {quota_name}, requested: '
                    f"{GPU_QUOTA}={requested}, used: {GPU_QUOTA}={used}, limited: {GPU_QUOTA}={hard}",
                    {"name": name, "kind": "pods"},
                )

    def _gpus_used(self, namespace: str) -> int:
        return sum(
            _gpus(c)
            for (ns, _), pod in self.pods.items()
            if ns == namespace and pod["status"]["phase"] not in ("Succeeded", "Failed")
            for c in pod["spec"]["containers"]
        )

    def _quota_view(self, quota: dict) -> dict:
        """A quota as read back: once the quota controller has synced it, its status says the hard
        limits and what the namespace's pods use of them."""
        view = copy.deepcopy(quota)
        hard = view["spec"].get("hard") or {}
        used = self._gpus_used(view["metadata"]["namespace"])
        view["status"] = {"hard": dict(hard), "used": {k: str(used if k == GPU_QUOTA else 0) for k in hard}}
        return view

    def _node_for(self, selector: dict[str, str], index: int = 0, preferred: list[dict] = ()) -> str:
        """The node the scheduler binds a pod to: of those its selector matches (and, if any of
        them do, those its preferred node affinity matches), one per index."""
        matching = [
            name
            for name, node in self.nodes.items()
            if all(node["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        liked = [name for name in matching if _meets(self.nodes[name]["metadata"]["labels"], preferred)]
        matching = liked or matching
        return matching[index % len(matching)] if matching else "node-1"

    def _job_pods(self, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.pods.values()
            if p["metadata"]["labels"].get("batch.kubernetes.io/controller-uid") == uid
        ]

    def _end_pods(self, job: dict, *, exit_code: int) -> None:
        for pod in self._job_pods(job):
            self._end_pod(pod, exit_code)

    def _end_pod(self, pod: dict, exit_code: int, *, finished_at: str | None = None) -> None:
        status = pod["status"]
        container = status["containerStatuses"][0]
        started = container["state"].get("running", {}).get("startedAt", now())
        container["state"] = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": started,
                "finishedAt": finished_at or now(),
                "containerID": container.get("containerID", "containerd://0"),
            }
        }
        container.update(ready=False, started=False)
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        pod["metadata"]["finalizers"] = []  # the controller has counted it

    def _delete_pods_of(self, job: dict) -> None:
        for pod in self._job_pods(job):
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            self.pods.pop(key, None)
            self.logs.pop(key, None)

    def _next_version(self) -> str:
        return str(next(self._version))

    def _namespace_object(self, name: str, labels: dict[str, str]) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": now(),
                "labels": {**labels, "kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    # --- the API ------------------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        """(status, body, extra headers) for one request."""
        with self.lock:
            self.requests.append(request)
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return 401, ApiError(401, "Unauthorized", "Unauthorized").status(), {}
            if self.failing:
                error = ApiError(
                    self.failing, "ServiceUnavailable", "the server is currently unable to handle the request"
                )
                return self.failing, error.status(), {}
            try:
                return self._route(request)
            except ApiError as error:
                return error.code, error.status(), {}

    def _route(self, r: Request) -> tuple[int, Any, dict[str, str]]:
        parts = [p for p in r.path.split("/") if p]
        labels = parse_selector(r.query.get("labelSelector", [""])[0])
        fields = parse_fields(r.query.get("fieldSelector", [""])[0])

        def selector(item: dict) -> bool:
            return labels(item["metadata"].get("labels") or {}) and fields(item)

        match r.method, parts:
            case "POST", ["api", "v1", "namespaces"]:
                return self._create_namespace(r)
            case "GET", ["api", "v1", "namespaces"]:
                return 200, self._list("NamespaceList", "v1", self.namespaces.values(), selector), {}
            case "DELETE", ["api", "v1", "namespaces", name]:
                return self._delete_namespace(name)
            case "GET", ["api", "v1", "namespaces", name]:
                if name not in self.namespaces:
                    raise not_found("namespaces", name)
                return 200, self.namespaces[name], {}
            case "PUT", ["api", "v1", "namespaces", name]:
                return self._replace_namespace(name, r)
            case "PATCH", ["api", "v1", "namespaces", name]:
                return self._patch_namespace(name, r)
            case ("GET" | "POST") as method, ["api", "v1", "namespaces", ns, "secrets"]:
                if method == "GET":
                    return self._list_objects(SECRETS, ns, selector)
                return self._create_object(SECRETS, ns, r)
            case ("GET" | "DELETE") as method, ["api", "v1", "namespaces", ns, "secrets", name]:
                return self._object(SECRETS, method, ns, name, r)
            case "GET", ["api", "v1", "resourcequotas"]:
                return self._list_objects(QUOTAS, None, selector)
            case "GET", ["api", "v1", "services"]:
                return self._list_objects(SERVICES, None, selector)
            case ("GET" | "POST") as method, ["api", "v1", "namespaces", ns, "services"]:
                if method == "GET":
                    return self._list_objects(SERVICES, ns, selector)
                return self._create_object(SERVICES, ns, r)
            case ("GET" | "DELETE") as method, ["api", "v1", "namespaces", ns, "services", name]:
                return self._object(SERVICES, method, ns, name, r)
            case "GET", ["apis", "networking.k8s.io", "v1", "networkpolicies"]:
                return self._list_objects(POLICIES, None, selector)
            case ("GET" | "POST") as method, ["api", "v1", "namespaces", ns, "resourcequotas"]:
                if method == "GET":
                    return self._list_objects(QUOTAS, ns, selector)
                return self._create_object(QUOTAS, ns, r)
            case ("GET" | "POST") as method, [
                "apis",
                "networking.k8s.io",
                "v1",
                "namespaces",
                ns,
                "networkpolicies",
            ]:
                if method == "GET":
                    return self._list_objects(POLICIES, ns, selector)
                return self._create_object(POLICIES, ns, r)
            case ("GET" | "PUT" | "DELETE") as method, [
                "api",
                "v1",
                "namespaces",
                ns,
                "resourcequotas",
                name,
            ]:
                return self._object(QUOTAS, method, ns, name, r)
            case (
                ("GET" | "PUT" | "DELETE") as method,
                ["apis", "networking.k8s.io", "v1", "namespaces", ns, "networkpolicies", name],
            ):
                return self._object(POLICIES, method, ns, name, r)
            case "POST", ["apis", "batch", "v1", "namespaces", ns, "jobs"]:
                return self._create_job(ns, r)
            case "GET", ["apis", "batch", "v1", "jobs"]:
                self._check("list", "jobs", "")
                return 200, self._list("JobList", "batch/v1", self.jobs.values(), selector), {}
            case "GET", ["apis", "batch", "v1", "namespaces", ns, "jobs"]:
                jobs = [j for (n, _), j in self.jobs.items() if n == ns]
                return 200, self._list("JobList", "batch/v1", jobs, selector), {}
            case "GET", ["apis", "batch", "v1", "namespaces", ns, "jobs", name]:
                self._check("get", "jobs", ns)
                if (ns, name) not in self.jobs:
                    raise not_found("jobs", name, "batch")
                return 200, self.jobs[(ns, name)], {}
            case "DELETE", ["apis", "batch", "v1", "namespaces", ns, "jobs", name]:
                return self._delete_job(ns, name, r)
            case "GET", ["api", "v1", "pods"]:
                return 200, self._list("PodList", "v1", self.pods.values(), selector), {}
            case "GET", ["api", "v1", "namespaces", ns, "pods"]:
                pods = [p for (n, _), p in self.pods.items() if n == ns]
                return 200, self._list("PodList", "v1", pods, selector), {}
            case "GET", ["api", "v1", "namespaces", ns, "pods", name, "log"]:
                return self._pod_log(ns, name, r)
            case "GET", ["api", "v1", "nodes"]:
                self._check("list", "nodes", "")
                return 200, self._list("NodeList", "v1", self.nodes.values(), selector), {}
            case "GET", ["api", "v1", "nodes", name]:
                self._check("get", "nodes", "")
                return 200, self._existing_node(name), {}
            case "PATCH", ["api", "v1", "nodes", name]:
                return self._patch_node(name, r)
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    def _check(self, verb: str, resource: str, namespace: str, group: str | None = None) -> None:
        if (verb, resource) in self.forbidden:
            raise forbidden(verb, resource, group or ("batch" if resource == "jobs" else ""), namespace)

    def _list(self, kind: str, api_version: str, items, selector) -> dict:
        # List items carry no kind/apiVersion; the list does.
        chosen = []
        for item in items:
            if selector(item):
                entry = copy.deepcopy(item)
                entry.pop("kind", None)
                entry.pop("apiVersion", None)
                chosen.append(entry)
        return {
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": self._next_version()},
            "items": chosen,
        }

    def _create_namespace(self, r: Request) -> tuple[int, Any, dict[str, str]]:
        self._check("create", "namespaces", "")
        validation = r.query.get("fieldValidation", ["Warn"])[0]
        body, warnings = decode("Namespace", r.body, NAMESPACE, validation)
        name = (body.get("metadata") or {}).get("name", "")
        if not DNS_LABEL.fullmatch(name) or len(name) > 63:
            raise invalid(
                "Namespace",
                "",
                name,
                [
                    invalid_value(
                        "metadata.name",
                        name,
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                        "or '-', and must start and end with an alphanumeric character",
                    )
                ],
            )
        errors = label_errors("metadata.labels", body["metadata"].get("labels") or {})
        if errors:
            raise invalid("Namespace", "", name, errors)
        if name in self.namespaces:
            raise already_exists("namespaces", name)
        self.namespaces[name] = self._namespace_object(name, body["metadata"].get("labels") or {})
        return 201, self.namespaces[name], self._warn(warnings)

    def _replace_namespace(self, name: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        self._check("update", "namespaces", "")
        current = self._existing_namespace(name)
        body, warnings = decode("Namespace", r.body, NAMESPACE, _validation(r))
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        version = meta.get("resourceVersion")
        if version and version != current["metadata"]["resourceVersion"]:
            raise conflict("namespaces", name)
        return self._update_namespace(current, meta, warnings)

    def _patch_namespace(self, name: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        self._check("patch", "namespaces", "")
        current = self._existing_namespace(name)
        content_type = r.headers.get("content-type", "").partition(";")[0].strip()
        if content_type not in MERGE_PATCHES:
            # A real server also takes JSON Patch and apply patches, which the adapter never sends.
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, "
                "application/strategic-merge-patch+json, application/apply-patch+yaml",
            )
        if not isinstance(r.body, dict):
            raise bad_request("the body of the patch is not a JSON object")
        merged = merge_patch(current, r.body)
        body, warnings = decode("Namespace", merged, NAMESPACE, _validation(r))
        if (body.get("metadata") or {}).get("name") != name:
            raise bad_request("metadata.name: Invalid value: field is immutable")
        return self._update_namespace(current, body["metadata"], warnings)

    def _existing_node(self, name: str) -> dict:
        if name not in self.nodes:
            raise not_found("nodes", name)
        return {"kind": "Node", "apiVersion": "v1", **self.nodes[name]}

    def _patch_node(self, name: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        """A merge patch of a node, as `kubectl cordon` sends ({"spec": {"unschedulable": true}}).
        Only metadata labels/annotations and spec.unschedulable may change here; a real server
        would take more, which the adapter never sends."""
        self._check("patch", "nodes", "")
        current = self._existing_node(name)
        content_type = r.headers.get("content-type", "").partition(";")[0].strip()
        if content_type not in MERGE_PATCHES:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format")
        if not isinstance(r.body, dict):
            raise bad_request("the body of the patch is not a JSON object")
        unknown = set(r.body) - {"metadata", "spec"} or set(r.body.get("spec") or {}) - {"unschedulable"}
        if unknown:
            raise bad_request(f"the fake API server does not patch {sorted(unknown)} of nodes")
        merged = merge_patch(current, r.body)
        unschedulable = (merged.get("spec") or {}).get("unschedulable")
        if unschedulable is not None and not isinstance(unschedulable, bool):
            raise invalid(
                "Node", "", name, [invalid_value("spec.unschedulable", unschedulable, "must be a bool")]
            )
        if (merged.get("metadata") or {}).get("name") != name:
            raise bad_request("metadata.name: Invalid value: field is immutable")
        merged["metadata"]["resourceVersion"] = self._next_version()
        merged.pop("kind", None)
        merged.pop("apiVersion", None)
        self.nodes[name] = merged
        return 200, {"kind": "Node", "apiVersion": "v1", **merged}, {}

    def _existing_namespace(self, name: str) -> dict:
        if name not in self.namespaces:
            raise not_found("namespaces", name)
        return self.namespaces[name]

    def _update_namespace(
        self, current: dict, meta: dict, warnings: list[str]
    ) -> tuple[int, Any, dict[str, str]]:
        name = current["metadata"]["name"]
        labels = dict(meta.get("labels") or {})
        errors = label_errors("metadata.labels", labels)
        if errors:
            raise invalid("Namespace", "", name, errors)
        current["metadata"]["labels"] = {**labels, NAME_LABEL: name}  # the server keeps this one
        if meta.get("annotations") is not None:
            current["metadata"]["annotations"] = dict(meta["annotations"])
        current["metadata"]["resourceVersion"] = self._next_version()
        return 200, copy.deepcopy(current), self._warn(warnings)

    # --- ResourceQuotas and NetworkPolicies ---------------------------------------------------

    def _create_object(self, res: Resource, namespace: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        self._check("create", res.resource, namespace, res.group)
        body, warnings = self._decoded(res.kind, res.schema, namespace, r)
        meta = body["metadata"]
        if namespace not in self.namespaces:
            raise not_found("namespaces", namespace)
        name = meta.get("name", "")
        if res is SECRETS:
            fold_string_data(body)
        errors = meta_errors(meta) + res.validate(body)
        if errors:
            raise invalid(res.kind, res.group, name, errors)
        store = self.objects[res.resource]
        if (namespace, name) in store:
            raise already_exists(res.resource, name, res.group)
        created = {**body, "apiVersion": res.api_version, "kind": res.kind}
        created["metadata"] = {
            **{k: v for k, v in meta.items() if k in ("name", "labels", "annotations", "ownerReferences")},
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(),
            "creationTimestamp": now(),
            **({"generation": 1} if res.generation else {}),
        }
        if res is POLICIES:
            default_policy(created)
        if res is QUOTAS:
            created["status"] = {}  # the quota controller fills it in on its next sync
        if res is SERVICES:
            default_service(created)
        store[(namespace, name)] = created
        return 201, copy.deepcopy(created), self._warn(warnings)

    def _object(
        self, res: Resource, method: str, namespace: str, name: str, r: Request
    ) -> tuple[int, Any, dict[str, str]]:
        verb = {"GET": "get", "PUT": "update", "DELETE": "delete"}[method]
        self._check(verb, res.resource, namespace, res.group)
        store = self.objects[res.resource]
        current = store.get((namespace, name))
        if method == "PUT":
            return self._replace_object(res, namespace, name, current, r)
        if current is None:
            raise not_found(res.resource, name, res.group)
        if method == "GET":
            return 200, self._view(res, current), {}
        del store[(namespace, name)]
        if res.return_deleted:
            return 200, self._view(res, current), {}
        details = {**_details(res.resource, name, res.group), "uid": current["metadata"]["uid"]}
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }
        return 200, status, {}

    def _replace_object(
        self, res: Resource, namespace: str, name: str, current: dict | None, r: Request
    ) -> tuple[int, Any, dict[str, str]]:
        body, warnings = self._decoded(res.kind, res.schema, namespace, r)
        meta = body["metadata"]
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if current is None:
            raise not_found(res.resource, name, res.group)
        version = meta.get("resourceVersion")
        if version and version != current["metadata"]["resourceVersion"]:
            raise conflict(res.resource, name, res.group)
        errors = meta_errors(meta) + res.validate(body)
        if errors:
            raise invalid(res.kind, res.group, name, errors)
        replaced = {**body, "apiVersion": res.api_version, "kind": res.kind}
        replaced["metadata"] = {
            **current["metadata"],
            "labels": meta.get("labels") or {},
            "resourceVersion": self._next_version(),
        }
        if res is POLICIES:
            default_policy(replaced)
            if replaced["spec"] != current["spec"]:
                replaced["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if res is QUOTAS:
            replaced["status"] = current.get("status", {})  # status is written through /status only
        self.objects[res.resource][(namespace, name)] = replaced
        return 200, self._view(res, replaced), self._warn(warnings)

    def _list_objects(
        self, res: Resource, namespace: str | None, selector
    ) -> tuple[int, Any, dict[str, str]]:
        self._check("list", res.resource, namespace or "", res.group)
        items = [
            self._view(res, obj)
            for (ns, _), obj in sorted(self.objects[res.resource].items())
            if namespace is None or ns == namespace
        ]
        return 200, self._list(f"{res.kind}List", res.api_version, items, selector), {}

    def _decoded(self, kind: str, schema: dict, namespace: str, r: Request) -> tuple[dict, list[str]]:
        """A body decoded as the API server decodes it, for an object of the URL's namespace."""
        _json_only(r)
        body, warnings = decode(kind, r.body, schema, _validation(r))
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        return body, warnings

    def _view(self, res: Resource, obj: dict) -> dict:
        return (
            self._quota_view(obj) if res is QUOTAS and obj.get("status") is not None else copy.deepcopy(obj)
        )

    def _warn(self, warnings: list[str]) -> dict[str, str]:
        self.warnings += warnings
        return _warning_headers(warnings)

    def _delete_namespace(self, name: str) -> tuple[int, Any, dict[str, str]]:
        """Answers the namespace as Terminating; its content goes at once (a real one takes a while)."""
        self._check("delete", "namespaces", "")
        namespace = self.namespaces.pop(name, None)
        if namespace is None:
            raise not_found("namespaces", name)
        for key in [k for k in self.jobs if k[0] == name]:
            del self.jobs[key]
        for key in [k for k in self.pods if k[0] == name]:
            self.pods.pop(key)
            self.logs.pop(key, None)
        for store in self.objects.values():
            for key in [k for k in store if k[0] == name]:
                del store[key]
        namespace["metadata"]["deletionTimestamp"] = now()
        namespace["status"]["phase"] = "Terminating"
        return 200, namespace, {}

    def _create_job(self, namespace: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        self._check("create", "jobs", namespace)
        body, warnings = self._decoded("Job", JOB, namespace, r)
        meta = body["metadata"]
        if namespace not in self.namespaces:
            raise not_found("namespaces", namespace)
        name = meta.get("name", "")
        errors = validate_job(body)
        if errors:
            raise invalid("Job", "batch", name, errors)
        denied = kueue_webhook_errors(body)
        if denied:
            raise ApiError(
                403,
                "Forbidden",
                f'admission webhook "vjob.kb.io" denied the request: {"; ".join(denied)}',
            )
        if (namespace, name) in self.jobs:
            raise already_exists("jobs", name, "batch")
        job = default_job(body, namespace, self._next_version())
        self.jobs[(namespace, name)] = job
        created = copy.deepcopy(job)
        if job["spec"]["suspend"]:
            # The controller's first sync of a Job created suspended.
            self._set_condition(job, "Suspended", "True", "JobSuspended", "Job suspended")
            self._write_status(job)
        # Pod Security checks a workload's pod template only in warn and audit modes: it enforces
        # on the pods themselves.
        level, shown = pod_security_level(self.namespaces[namespace], "warn")
        violations = pod_security_violations(job["spec"]["template"]["spec"], level)
        if violations:
            text = f'would violate PodSecurity "{shown}": {", ".join(violations)}'
            warnings.append('299 - "' + text.replace('"', '\\"') + '"')
        return 201, created, self._warn(warnings)

    def _delete_job(self, namespace: str, name: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        self._check("delete", "jobs", namespace)
        job = self.jobs.get((namespace, name))
        if job is None:
            raise not_found("jobs", name, "batch")
        policy = r.query.get("propagationPolicy", [None])[0]
        if policy is None and isinstance(r.body, dict):
            policy = r.body.get("propagationPolicy")
        headers = {}
        if policy in ("Background", "Foreground"):
            self._delete_pods_of(job)
            self._collect_dependents(job)
        elif policy in (None, "Orphan"):
            if policy is None:
                headers["Warning"] = ORPHAN_WARNING
            for pod in self._job_pods(job):
                pod["metadata"].pop("ownerReferences", None)
            self._orphan_dependents(job)
        else:
            raise invalid(
                "DeleteOptions",
                "",
                "",
                [not_supported("propagationPolicy", policy, ["Foreground", "Background", "Orphan"])],
            )
        del self.jobs[(namespace, name)]
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]},
        }
        return 200, status, headers

    def _pod_log(self, namespace: str, name: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise not_found("pods", name)
        container = r.query.get("container", [pod["spec"]["containers"][0]["name"]])[0]
        statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
        if container not in statuses:
            raise bad_request(f"container {container} is not valid for pod {name}")
        waiting = statuses[container]["state"].get("waiting")
        if waiting:
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {waiting["reason"]}'
            )
        data = self.logs.get((namespace, name), b"")
        limit = r.query.get("limitBytes")
        if limit:
            data = data[: int(limit[0])]
        return 200, data, {}


def default_job(body: dict, namespace: str, version: str) -> dict:
    """What the API server stores and answers for a created Job (see the notes' Defaulting list)."""
    job = copy.deepcopy(body)
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    uid = str(uuid.uuid4())
    meta = job["metadata"]
    name = meta["name"]
    meta.update(namespace=namespace, uid=uid, resourceVersion=version, generation=1, creationTimestamp=now())
    controller_labels = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    if not meta.get("labels"):
        meta["labels"] = dict(controller_labels)
    spec = job["spec"]
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"], spec["parallelism"] = 1, 1
    spec.setdefault("manualSelector", False)
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    template = spec["template"]
    template.setdefault("metadata", {})
    template["metadata"]["labels"] = {**(template["metadata"].get("labels") or {}), **controller_labels}
    pod = template["spec"]
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("securityContext", {})
    pod.setdefault("terminationGracePeriodSeconds", 30)
    for container in pod["containers"]:
        container.setdefault("imagePullPolicy", _pull_policy(container["image"]))
        container.setdefault("resources", {})
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
    job["status"] = {}
    return job


def _indexed(job: dict) -> bool:
    return job["spec"].get("completionMode") == "Indexed"


def _fail_job_rule(job: dict, container: str, exit_code: int) -> int | None:
    """The index of the first pod failure policy rule that fails the Job for this exit code."""
    for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules") or []):
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName", container) != container:
            continue
        within = exit_code in codes.get("values", [])
        if within == (codes.get("operator") == "In"):
            return index if rule.get("action") == "FailJob" else None
    return None


def _pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def validate_job(job: dict) -> list[FieldError]:
    """The parts of the Job validation the adapter can run into."""
    errors: list[FieldError] = []
    meta = job.get("metadata") or {}
    name = meta.get("name", "")
    if not name:
        errors.append(required("metadata.name", "name or generateName is required"))
    elif not DNS_SUBDOMAIN.fullmatch(name) or len(name) > 63:
        errors.append(
            invalid_value("metadata.name", name, "must be a valid DNS-1123 label of at most 63 characters")
        )
    for path, labels in (
        ("metadata.labels", meta.get("labels")),
        (
            "spec.template.metadata.labels",
            ((job.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels"),
        ),
    ):
        for value in (labels or {}).values():
            if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
                errors.append(
                    invalid_value(
                        path,
                        value,
                        "a valid label must be an empty string or consist of "
                        "alphanumeric characters, '-', '_' or '.', and must start and end "
                        "with an alphanumeric character (at most 63)",
                    )
                )
    spec = job.get("spec") or {}
    for key in ("backoffLimit", "ttlSecondsAfterFinished"):
        if spec.get(key, 0) < 0:
            errors.append(invalid_value(f"spec.{key}", spec[key], "must be greater than or equal to 0"))
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        errors.append(
            invalid_value(
                "spec.activeDeadlineSeconds", spec["activeDeadlineSeconds"], "must be greater than 0"
            )
        )
    mode = spec.get("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        errors.append(not_supported("spec.completionMode", mode, ["NonIndexed", "Indexed"]))
    if mode == "Indexed" and spec.get("completions") is None:
        errors.append(required("spec.completions", "when completion mode is Indexed"))
    for key in ("completions", "parallelism"):
        if spec.get(key) is not None and spec[key] < 0:
            errors.append(invalid_value(f"spec.{key}", spec[key], "must be greater than or equal to 0"))
    errors += _failure_policy_errors(spec)
    pod = (spec.get("template") or {}).get("spec")
    if pod is None:
        return [*errors, required("spec.template.spec")]
    subdomain = pod.get("subdomain")
    if subdomain and (not DNS_LABEL.fullmatch(subdomain) or len(subdomain) > 63):
        errors.append(
            invalid_value("spec.template.spec.subdomain", subdomain, "must be a valid DNS-1123 label")
        )
    for key, value in (pod.get("nodeSelector") or {}).items():
        if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            errors.append(
                invalid_value(
                    f"spec.template.spec.nodeSelector[{key}]",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
    errors += _node_affinity_errors(pod.get("affinity") or {})
    restart = pod.get("restartPolicy")
    if not restart:
        errors.append(required("spec.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        errors.append(not_supported("spec.template.spec.restartPolicy", restart, ["OnFailure", "Never"]))
    containers = pod.get("containers") or []
    if not containers:
        errors.append(required("spec.template.spec.containers"))
    for i, container in enumerate(containers):
        path = f"spec.template.spec.containers[{i}]"
        if not container.get("name"):
            errors.append(required(f"{path}.name"))
        if not container.get("image"):
            errors.append(required(f"{path}.image"))
        errors += _gpu_errors(path, container.get("resources") or {})
    return errors


NODE_SELECTOR_OPERATORS = ["DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn"]


def _node_affinity_errors(affinity: dict) -> list[FieldError]:
    """ValidateNodeAffinity on the preferred terms: a weight of 1-100, known operators, values
    for In and NotIn (none for Exists and DoesNotExist), label names as keys."""
    errors = []
    path = "spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution"
    preferred = (affinity.get("nodeAffinity") or {}).get("preferredDuringSchedulingIgnoredDuringExecution")
    for i, term in enumerate(preferred or []):
        weight = term.get("weight", 0)
        if not 1 <= weight <= 100:
            errors.append(invalid_value(f"{path}[{i}].weight", weight, "must be in the range 1-100"))
        for j, requirement in enumerate((term.get("preference") or {}).get("matchExpressions") or []):
            where = f"{path}[{i}].preference.matchExpressions[{j}]"
            key, operator, values = (
                requirement.get("key", ""),
                requirement.get("operator"),
                requirement.get("values"),
            )
            if not LABEL_KEY.fullmatch(key):
                errors.append(
                    invalid_value(
                        f"{where}.key",
                        key,
                        "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                        "start and end with an alphanumeric character",
                    )
                )
            if operator in ("In", "NotIn") and not values:
                errors.append(
                    required(f"{where}.values", "must be specified when `operator` is 'In' or 'NotIn'")
                )
            elif operator in ("Exists", "DoesNotExist") and values:
                errors.append(
                    forbidden_value(
                        f"{where}.values",
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    )
                )
            elif operator not in NODE_SELECTOR_OPERATORS:
                errors.append(not_supported(f"{where}.operator", operator or "", NODE_SELECTOR_OPERATORS))
    return errors


def kueue_webhook_errors(job: dict) -> list[str]:
    """Kueue's validating webhook on a Job in one of its queues (ValidateTASPodSetRequest): at
    most one topology annotation on the pod template, and a label name as its value."""
    labels = job["metadata"].get("labels") or {}
    if KUEUE_QUEUE not in labels:
        return []
    annotations = ((job["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
    path = "spec.template.metadata.annotations"
    kinds = (KUEUE_REQUIRED_TOPOLOGY, KUEUE_PREFERRED_TOPOLOGY, KUEUE_UNCONSTRAINED_TOPOLOGY)
    errors = []
    if sum(kind in annotations for kind in kinds) > 1:
        listed = ", ".join(f'"{kind}"' for kind in kinds)
        errors.append(
            f"{path}: Invalid value: must not contain more than one topology annotation: [{listed}]"
        )
    for kind in kinds[:2]:
        value = annotations.get(kind)
        if value is not None and not LABEL_KEY.fullmatch(value):
            errors.append(
                f'{path}[{kind}]: Invalid value: "{value}": name part must consist of alphanumeric '
                "characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            )
    return errors


def _preferred(pod_spec: dict) -> list[dict]:
    """The match expressions of a pod's heaviest preferred node affinity term."""
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    terms = affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    if not terms:
        return []
    heaviest = max(terms, key=lambda term: term.get("weight", 0))
    return (heaviest.get("preference") or {}).get("matchExpressions") or []


def _meets(labels: dict[str, str], requirements: list[dict]) -> bool:
    """Whether node labels meet node selector requirements (the operators the fake knows)."""
    for requirement in requirements:
        key, operator, values = requirement["key"], requirement["operator"], requirement.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _failure_policy_errors(spec: dict) -> list[FieldError]:
    """validatePodFailurePolicy: restartPolicy Never, known actions and operators, exit codes
    sorted and unique, no 0 under In."""
    policy = spec.get("podFailurePolicy")
    if policy is None:
        return []
    errors = []
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart != "Never":
        errors.append(
            invalid_value(
                "spec.template.spec.restartPolicy",
                restart,
                'only "Never" is supported when podFailurePolicy is specified',
            )
        )
    for i, rule in enumerate(policy.get("rules") or []):
        path = f"spec.podFailurePolicy.rules[{i}]"
        action = rule.get("action")
        if action not in ("FailJob", "FailIndex", "Ignore", "Count"):
            errors.append(
                not_supported(f"{path}.action", action, ["Count", "FailIndex", "FailJob", "Ignore"])
            )
        codes, conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
        if (codes is None) == (conditions is None):
            errors.append(
                invalid_value(path, "", "specifying one of onExitCodes and onPodConditions is required")
            )
        if codes is not None:
            operator, values = codes.get("operator"), codes.get("values") or []
            if operator not in ("In", "NotIn"):
                errors.append(not_supported(f"{path}.onExitCodes.operator", operator, ["In", "NotIn"]))
            if not values:
                errors.append(
                    invalid_value(f"{path}.onExitCodes.values", values, "at least one value is required")
                )
            if values != sorted(set(values)):
                errors.append(
                    invalid_value(f"{path}.onExitCodes.values", values, "must be ordered and unique")
                )
            if operator == "In" and 0 in values:
                errors.append(
                    invalid_value(f"{path}.onExitCodes.values", 0, "must not be 0 for the In operator")
                )
    return errors


def _gpu_errors(path: str, resources: dict) -> list[FieldError]:
    """Extended resources cannot be overcommitted: integer, with a limit equal to the request."""
    errors = []
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for where, values in (("requests", requests), ("limits", limits)):
        value = values.get(GPU)
        if value is not None and not re.fullmatch(r"\d+", str(value)):
            errors.append(invalid_value(f"{path}.resources.{where}[{GPU}]", str(value), "must be an integer"))
    if GPU in requests:
        if GPU not in limits:
            errors.append(
                required(f"{path}.resources.limits", "Limit must be set for non overcommitable resources")
            )
        elif str(requests[GPU]) != str(limits[GPU]):
            errors.append(
                invalid_value(
                    f"{path}.resources.requests",
                    str(requests[GPU]),
                    f"must be equal to {GPU} limit of {limits[GPU]}",
                )
            )
    return errors


def status_problems(status: dict, *, delayed: bool) -> list[str]:
    """The API server's checks on a Job status write (the messages are verbatim)."""
    true = {c["type"] for c in status.get("conditions", []) if c["status"] == "True"}
    problems = []
    if delayed and "Complete" in true and "SuccessCriteriaMet" not in true:
        problems.append("cannot set Complete=True condition without the SuccessCriteriaMet=true condition")
    if delayed and "Failed" in true and "FailureTarget" not in true:
        problems.append("cannot set Failed=True condition without the FailureTarget=true condition")
    if "Complete" in true and not status.get("completionTime"):
        problems.append("completionTime is required for Complete jobs")
    if status.get("completionTime") and "Complete" not in true:
        problems.append("cannot set completionTime when there is no Complete=True condition")
    finished = bool(true & {"Complete", "Failed"})
    if finished and not status.get("startTime"):
        problems.append("startTime is required for finished job")
    if finished and status.get("active", 0) > 0:
        problems.append("active>0 is invalid for finished job")
    if status.get("ready", 0) > status.get("active", 0):
        problems.append("cannot set more ready pods than active")
    return problems


def _validation(r: Request) -> str:
    return r.query.get("fieldValidation", ["Warn"])[0]


def _json_only(r: Request) -> None:
    content_type = r.headers.get("content-type", "application/json")
    if not content_type.startswith("application/json"):
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f'the body of the request was in an unknown format - "{content_type}"',
        )


def _gpus(container: dict) -> int:
    return int(((container.get("resources") or {}).get("requests") or {}).get(GPU, 0))


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    return {"Warning": ", ".join(warnings)} if warnings else {}


def _key(external_id: str) -> tuple[str, str]:
    namespace, _, name = external_id.partition("/")
    return namespace, name


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubernetes
    protocol_version = "HTTP/1.1"  # keep-alive, like the client's connection pool expects

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, url.path, parse_qs(url.query), body, headers)
        code, payload, extra = self.fake.handle(request)
        if isinstance(payload, bytes):
            data, content_type = payload, "text/plain"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args) -> None:
        pass


def _owned_by(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])

"""The Kubernetes target: kustomize overlays deployed by digest with kubectl, every process a Deployment.

kubectl.py is the adapter (one method per kubectl call), render.py the offline half (the generated
kustomization, finding each process in the manifests, checks, the release Job), target.py the deploy
target and its Lease lock.
"""

from conveyor.deploy.k8s.kubectl import KubeApi, KubeCtl
from conveyor.deploy.k8s.render import (
    BUILD_DIR,
    COMPONENT,
    Workload,
    check_manifests,
    discover,
    release_job,
    schema_validate,
    split_image,
    write_kustomization,
)
from conveyor.deploy.k8s.target import K8sDeployTarget, LeaseLock, Previous, Rendered, poll

__all__ = [
    "BUILD_DIR",
    "COMPONENT",
    "K8sDeployTarget",
    "KubeApi",
    "KubeCtl",
    "LeaseLock",
    "Previous",
    "Rendered",
    "Workload",
    "check_manifests",
    "discover",
    "poll",
    "release_job",
    "schema_validate",
    "split_image",
    "write_kustomization",
]

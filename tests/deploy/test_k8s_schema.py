"""Every Kubernetes object of the overlays validates strictly (unknown fields rejected) against
Kubernetes' own JSON schemas, for the version in deploy_support.K8S_VERSION."""

import copy

import pytest
from deploy_support import K8S_OVERLAYS, K8S_VERSION


def import_kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError as exc:  # a missing tool fails the test, never skips it
        pytest.fail(f"kubernetes-validate is not installed ({exc}); pip install -r requirements/test.txt")
    return kubernetes_validate


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_objects_validate_strictly(render, overlay):
    kubernetes_validate = import_kubernetes_validate()
    objects = render(overlay)
    assert objects
    problems = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].split("/")[0].endswith(".cnpg.io"):
            continue  # an operator's kind: checked against its own CRDs in test_cnpg.py
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {'/'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_strict_validation_rejects_unknown_fields(render):
    """The validator can fail: a misspelt field in a Deployment is an error."""
    kubernetes_validate = import_kubernetes_validate()
    deployment = next(o for o in render("k8s/overlays/production") if o["kind"] == "Deployment")
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)  # valid as rendered

    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)

    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)

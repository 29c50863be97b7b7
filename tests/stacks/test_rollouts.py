"""Model delivery on every stack (issue 15 item 4): Argo Rollouts installed from the pinned chart, each
TF model served by a Rollout with its analysed canary, KEDA scaling the Rollout, the ServiceMonitor
labelling series with the pod-template hash the analysis compares, the served version pinned."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.lib import helm, rollout_specs
from components.models import model_service
from tests.conftest import ROOT, unavailable
from tools import manifests, mock_engine, reference


def stack_config(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def tf_models(stack):
    return [
        m for m, e in (stack_config(stack).get("mlplatform:models") or {}).items() if (e or {}).get("runtime", "tensorflow") == "tensorflow"
    ]


def monitored(stack):
    return (stack_config(stack).get("mlplatform:monitoring") or {}).get("enabled", True)


def of_kind(result, kind):
    return [r for r in result.k8s_objects() if r.raw.get("kind") == kind]


def test_argo_rollouts_installed_from_the_pinned_chart_where_models_are_analysed(result, stack):
    releases = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if helm.chart_name(r.inputs["chart"]) == "argo-rollouts"]
    if not (monitored(stack) and tf_models(stack)):
        assert releases == []
        return
    (release,) = releases
    assert release.inputs["version"] == helm.CHARTS["argo-rollouts"][0]
    assert release.inputs["namespace"] == rollout_specs.NAMESPACE
    from components.services.argo_rollouts import controller_values  # chart_values without the chart's ClusterRole (issue 24 item 6)

    assert release.raw["values"] == controller_values(monitoring=True)


def test_each_model_is_a_rollout_with_its_analysis_and_keda_scales_the_rollout(result, stack):
    if not (monitored(stack) and tf_models(stack)):
        pytest.skip(f"{stack}: no monitoring or no TF model, so no canary analysis (a Deployment)")
    ros = {r.raw["metadata"]["name"]: r for r in of_kind(result, "Rollout")}
    templates = {r.raw["metadata"]["name"]: r for r in of_kind(result, "AnalysisTemplate")}
    deployments = {r.raw["metadata"]["name"] for r in of_kind(result, "Deployment")}
    (release,) = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if helm.chart_name(r.inputs["chart"]) == "argo-rollouts"]
    scaled = {r.raw["spec"]["scaleTargetRef"]["name"]: r.raw["spec"]["scaleTargetRef"] for r in of_kind(result, "ScaledObject")}
    monitors = {r.raw["metadata"]["name"]: r.raw["spec"] for r in of_kind(result, "ServiceMonitor")}
    for model in tf_models(stack):
        name = model_service.object_name(model)
        assert name not in deployments, f"{stack}: {name} is still a Deployment"
        ro = ros[name]
        canary = ro.raw["spec"]["strategy"]["canary"]
        assert canary["analysis"]["templates"] == [{"templateName": rollout_specs.template_name(model)}]
        assert rollout_specs.template_name(model) in templates
        assert release.urn in ro.depends_on and release.urn in templates[rollout_specs.template_name(model)].depends_on
        assert "spec.replicas" in ro.ignore_changes  # KEDA owns the count
        assert scaled[name] == {"apiVersion": rollout_specs.API_VERSION, "kind": "Rollout", "name": name}
        assert monitors[name]["podTargetLabels"] == [rollout_specs.POD_HASH_LABEL]
        # The served version is on the pod template.
        assert rollout_specs.VERSION_ANNOTATION in ro.raw["spec"]["template"]["metadata"]["annotations"]


def test_rendered_delivery_objects_valid_against_the_crds(result, stack):
    if reference.reference_dir() is None:
        unavailable("../shared/reference not present (user checkout): Argo Rollouts and KEDA CRD schemas")
    for kind in ("Rollout", "AnalysisTemplate", "ServiceMonitor", "PodMonitor", "ScaledObject"):
        # validate() passes a kind it has no schema for: make sure this one has one
        assert reference.crd_schema(kind) is not None, f"no reference schema for {kind}"
        for r in of_kind(result, kind):
            assert manifests.validate(r.raw, "1.33") == [], (stack, kind, r.raw["metadata"]["name"], manifests.validate(r.raw, "1.33"))


def test_a_pinned_version_is_served_and_a_new_one_changes_only_the_pod_template():
    stack = "staging"
    model = tf_models(stack)[0]
    runs = {}
    for version in ("v6", "v7"):
        models = copy.deepcopy(stack_config(stack)["mlplatform:models"])
        models[model].setdefault("serving", {})["version"] = version
        runs[version] = mock_engine.run(stack, overrides={"mlplatform:models": models})
    name = model_service.object_name(model)
    (a,) = [r for r in of_kind(runs["v6"], "Rollout") if r.raw["metadata"]["name"] == name]
    (b,) = [r for r in of_kind(runs["v7"], "Rollout") if r.raw["metadata"]["name"] == name]
    for ro, version in ((a, "v6"), (b, "v7")):
        tpl = ro.raw["spec"]["template"]
        assert tpl["metadata"]["annotations"][rollout_specs.VERSION_ANNOTATION] == version
        env = {e["name"]: e.get("value") for e in tpl["spec"]["containers"][0]["env"]}
        assert env["SERVING_MODEL_URI"].endswith(f"/models/{model}/{version}")
    # Nothing but the served version differs: the rollout is that version's canary.
    assert mock_engine_diff(a.raw, b.raw) == {
        f"spec.template.metadata.annotations.{rollout_specs.VERSION_ANNOTATION}",
        "spec.template.spec.containers[0].env.SERVING_MODEL_URI",
    }

    # The offline preview (tools/preview_diff.py) says it in one line.
    from tools import preview_diff

    def resources(result):
        return {r.urn: {"urn": r.urn, "type": r.type, "name": r.name, "inputs": r.inputs} for r in result.records}

    md = preview_diff.render(resources(runs["v6"]), resources(runs["v7"]))
    assert f"> model {model}: v6 → v7 (a canary rollout, analysed against the stable pods)." in md, md


def mock_engine_diff(a, b):
    def flat(v, path=""):
        if isinstance(v, dict):
            return {k2: v2 for k, x in v.items() for k2, v2 in flat(x, f"{path}.{k}" if path else k).items()}
        if isinstance(v, list) and all(isinstance(x, dict) and "name" in x and "value" in x for x in v) and v:
            return {f"{path}.{x['name']}": x["value"] for x in v}
        if isinstance(v, list):
            return {k2: v2 for i, x in enumerate(v) for k2, v2 in flat(x, f"{path}[{i}]").items()}
        return {path: v}

    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_prod_never_trains_and_serves_what_it_receives(result, stack):
    """Promotion, not retraining (issue 15 item 3): prod receives every TF model from staging and has
    no training Job, CronJob or training identity; its servers still run as analysed Rollouts."""
    models = stack_config(stack).get("mlplatform:models") or {}
    received = {m for m, e in models.items() if (e or {}).get("source")}
    # a vLLM model is received too (its weights, issue 25): served by its own Rollout, llm-<name>
    llms = {m for m, e in models.items() if (e or {}).get("runtime") == "vllm" and not e.get("adapterOf")}
    # a LoRA adapter is received too, served by its base's Rollout (docs/lora.md): no Rollout of its own
    adapters = {m for m, e in models.items() if (e or {}).get("adapterOf")}
    if stack == "prod":
        assert received == set(tf_models(stack)) | llms | adapters and all(models[m]["source"]["stack"] == "staging" for m in received)
    if received >= set(tf_models(stack)) | llms:  # nothing trained or imported here
        assert of_kind(result, "Job") == [] and of_kind(result, "CronJob") == []
        assert not [r for r in result.of_type("aws:iam/role:Role") if "training-store" in r.name]
    names = {r.raw["metadata"]["name"] for r in of_kind(result, "Rollout")}
    tf_received = received - llms - adapters
    assert {model_service.object_name(m) for m in tf_received} | {f"llm-{m}" for m in received & llms} <= names
    assert not {f"llm-{m}" for m in adapters} & names


def test_training_publishes_candidates_where_canaries_decide(result, stack):
    """Scheduled retraining (CronJob) and the pipeline's run publish a version only, never the champion
    (issue 24 item 8: their role may not move an alias): the pipeline adopts it as the candidate, and on
    a stack with Argo Rollouts only a passed canary moves the champion (ops/deliver.py)."""
    runs = [j for j in of_kind(result, "Job") if j.raw["metadata"]["name"].startswith("train-")] + [
        type("R", (), {"raw": {"spec": c.raw["spec"]["jobTemplate"]["spec"]}}) for c in of_kind(result, "CronJob")
    ]
    for run in runs:
        env = {e["name"]: e.get("value") for e in run.raw["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["TRAIN_PUBLISH_AS"] == "candidate"

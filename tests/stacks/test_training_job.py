"""TrainingJob and ArtifactStore on every stack."""

from __future__ import annotations

import fnmatch
import json

import pytest
import yaml

from components.cluster.gpu_pools import GPU_RESOURCE, GPU_TOLERATION
from components.config import TrainingConfig
from components.models.training_job import NON_RETRYABLE_EXIT_CODES, run_name
from tests.conftest import ROOT, trains
from tools import mock_engine


def cfg(stack):
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def training(stack):
    """The first model's training config as written in the stack file (every stack has MNIST first)."""
    return next(iter(cfg(stack)["mlplatform:models"].values())).get("training", {})


def job_records(result):
    return result.of_type("kubernetes:batch/v1:Job")


def job(result):
    """The first model's (MNIST's) training Job."""
    if not trains(result.stack):
        pytest.skip(f"{result.stack} trains nothing (models.<name>.source): tests/stacks/test_rollouts.py checks it has no Job")
    first = next(iter(cfg(result.stack)["mlplatform:models"]))
    (j,) = [r for r in job_records(result) if r.raw["metadata"]["labels"].get("mlplatform.io/model") == first]
    return j.raw


def test_job_named_by_model_image_and_hyperparameters():
    a = run_name("mnist", "img:ctx-1", TrainingConfig(epochs=10))
    assert a.startswith("train-mnist-")
    assert a == run_name("mnist", "img:ctx-1", TrainingConfig(epochs=10))
    assert a != run_name("mnist", "img:ctx-2", TrainingConfig(epochs=10))
    assert a != run_name("mnist", "img:ctx-1", TrainingConfig(epochs=11))
    assert a != run_name("fraud", "img:ctx-1", TrainingConfig(epochs=10))
    # the schedule is not a hyperparameter
    assert a == run_name("mnist", "img:ctx-1", TrainingConfig(epochs=10, schedule="0 3 * * *"))


def test_batch_size_left_to_the_arch_unless_configured():
    from components.models.training_job import train_env

    def env(c):
        return {e["name"]: e.get("value") for e in train_env("mnist", c, "s3://b", None)}

    assert "TRAIN_BATCH_SIZE" not in env(TrainingConfig())  # the trainer's per-arch default (seed 128, strong 256)
    assert env(TrainingConfig(batchSize=512))["TRAIN_BATCH_SIZE"] == "512"
    assert run_name("mnist", "img:ctx-1", TrainingConfig()) != run_name("mnist", "img:ctx-1", TrainingConfig(batchSize=512))
    assert "TRAIN_CHAMPION_MARGIN" not in env(TrainingConfig())  # the trainer's default
    assert env(TrainingConfig(championMargin=0.002))["TRAIN_CHAMPION_MARGIN"] == "0.002"
    assert env(TrainingConfig())["TRAIN_MODEL_NAME"] == "mnist"  # the store prefix: <root>/models/mnist/


def test_noop_up_keeps_the_job_and_a_change_starts_a_new_run(stack, result):
    again = mock_engine.run(stack)
    assert job(again)["metadata"]["name"] == job(result)["metadata"]["name"]
    catalogue = cfg(stack)["mlplatform:models"]
    mnist = dict(catalogue["mnist"], training=dict(training(stack), epochs=training(stack).get("epochs", 10) + 1))
    changed = mock_engine.run(stack, overrides={"mlplatform:models": {**catalogue, "mnist": mnist}})
    assert job(changed)["metadata"]["name"] != job(result)["metadata"]["name"]


def test_up_does_not_block_on_training(result):
    assert job(result)["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"


def test_failure_policy_retries_disruptions_not_a_failed_gate(result):
    spec = job(result)["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"]["values"] == NON_RETRYABLE_EXIT_CODES and 3 in fail["onExitCodes"]["values"]
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget" for r in rules)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 1


def test_the_managed_job_never_expires_but_scheduled_runs_do(stack, result):
    """A TTL-deleted Job is recreated by the next refresh + up: an unplanned retrain (issue 29). The
    CronJob's runs are not in Pulumi's state, so they may expire."""
    assert "ttlSecondsAfterFinished" not in job(result)["spec"]
    for cron in result.of_type("kubernetes:batch/v1:CronJob"):
        assert cron.raw["spec"]["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] > 0, cron.urn


def test_gpu_scheduling_matches_the_stack(stack, result):
    pod = job(result)["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    gpus = training(stack).get("gpus", 1)
    if gpus:
        assert limits[GPU_RESOURCE] == gpus
        assert GPU_TOLERATION in pod["tolerations"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    else:
        assert GPU_RESOURCE not in limits and "tolerations" not in pod


def test_training_pod_is_locked_down(result):
    pod = job(result)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert ":ctx-" in c["image"]


def test_cronjob_only_when_scheduled(stack, result):
    crons = result.of_type("kubernetes:batch/v1:CronJob")
    schedule = training(stack).get("schedule")
    assert len(crons) == (1 if schedule else 0)
    if schedule:
        spec = crons[0].raw["spec"]
        assert spec["schedule"] == schedule and spec["concurrencyPolicy"] == "Forbid"


def test_bucket_hardened_and_role_scoped(stack, result):
    if cfg(stack)["mlplatform:cluster"]["kind"] != "eks":
        assert result.of_type("aws:s3/bucket:Bucket") == []
        (minio,) = [d for d in result.of_type("kubernetes:apps/v1:Deployment") if d.raw["metadata"]["name"] == "minio"]
        assert ":" in minio.raw["spec"]["template"]["spec"]["containers"][0]["image"]
        return
    (bucket,) = result.of_type("aws:s3/bucket:Bucket")
    (pab,) = result.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(pab.inputs[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    (ver,) = result.of_type("aws:s3/bucketVersioning:BucketVersioning")
    assert ver.inputs["versioningConfiguration"]["status"] == "Enabled"
    assert result.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    if not trains(stack):  # prod receives its models: no training identity may write its store
        assert not [r for r in result.of_type("aws:iam/role:Role") if "training-store" in r.name]
        return
    policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", "mlplatform-mnist-training-store-policy").inputs["policy"])
    resources = {r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    # this bucket, nothing else, and the store's own key (S3 encrypts with it: issue 24 item 3)
    s3 = {r for r in resources if not r.startswith("arn:aws:kms:")}
    assert all(r.startswith(f"arn:aws:s3:::{bucket.name}-") for r in s3), resources
    assert len(resources - s3) == 1 and len(result.of_type("aws:kms/key:Key")) == 1, resources
    trust = json.loads(result.one("aws:iam/role:Role", "mlplatform-mnist-training-store-role").inputs["assumeRolePolicy"])
    assert "system:serviceaccount:ml-training:train-mnist" in trust["Statement"][0]["Condition"]["StringEquals"].values()


def allowed(policy: dict, action: str, bucket: str, key: str | None = None, prefix: str | None = None) -> bool:
    """IAM's answer for one S3 request against an identity policy of Allow statements: the action
    listed, the ARN matching a Resource (``*`` any run of characters), StringLike conditions met."""
    arn = f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")
    for st in policy["Statement"]:
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        if st["Effect"] != "Allow" or action not in st["Action"] or not any(fnmatch.fnmatchcase(arn, r) for r in resources):
            continue
        like = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if like is None or (prefix is not None and any(fnmatch.fnmatchcase(prefix, p) for p in like)):
            return True
    return False


def test_each_model_reaches_only_its_own_prefix():
    """Serving reads its model's versions only; training writes its model's versions and checkpoints
    only (and reads the bucket: its data may be anywhere in it)."""
    from components.lib.iam import s3_bucket_policy
    from components.models.training_job import store_prefixes

    arn = "arn:aws:s3:::models-bucket"
    serving = json.loads(s3_bucket_policy(arn, write=False, prefixes=["models/mnist/"]))
    assert allowed(serving, "s3:GetObject", "models-bucket", "models/mnist/20260101T000000Z-abc/saved_model/saved_model.pb")
    assert allowed(serving, "s3:ListBucket", "models-bucket", prefix="models/mnist/")
    assert not allowed(serving, "s3:GetObject", "models-bucket", "models/fraud/LATEST")
    assert not allowed(serving, "s3:GetObject", "models-bucket", "models/mnist-v2/LATEST")  # a name sharing the prefix
    assert not allowed(serving, "s3:ListBucket", "models-bucket", prefix="models/")
    assert not allowed(serving, "s3:PutObject", "models-bucket", "models/mnist/LATEST")
    training = json.loads(s3_bucket_policy(arn, write=True, prefixes=store_prefixes("mnist"), read_all=True))
    assert allowed(training, "s3:PutObject", "models-bucket", "models/mnist/LATEST")
    assert allowed(training, "s3:PutObject", "models-bucket", "checkpoints/mnist/train-mnist-0123456789/epoch-1")
    assert allowed(training, "s3:GetObject", "models-bucket", "data/mnist.npz")
    assert not allowed(training, "s3:PutObject", "models-bucket", "models/fraud/LATEST")
    assert not allowed(training, "s3:DeleteObject", "models-bucket", "checkpoints/fraud/train-fraud-1/epoch-1")
    assert not allowed(
        json.loads(s3_bucket_policy(arn, write=True, prefixes=store_prefixes("mnist"))), "s3:GetObject", "models-bucket", "x"
    )


def test_roles_on_every_eks_stack_are_scoped_to_the_model(stack, result):
    if cfg(stack)["mlplatform:cluster"]["kind"] != "eks":
        return
    for model in cfg(stack)["mlplatform:models"]:
        for part, write in (("training", True), ("serving", False)):
            found = [r for r in result.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == f"mlplatform-{model}-{part}-store-policy"]
            if not found:  # not every runtime has both parts
                continue
            policy = json.loads(found[0].inputs["policy"])
            b = next(st["Resource"] for st in policy["Statement"] if st["Sid"] == "List").removeprefix("arn:aws:s3:::")
            assert allowed(policy, "s3:PutObject" if write else "s3:GetObject", b, f"models/{model}/LATEST"), (model, part)
            assert not allowed(policy, "s3:PutObject", b, "models/some-other-model/LATEST"), (model, part)


def test_a_model_with_its_own_code_gets_its_own_image(result, stack):
    """Issue 14: a model's training folder (models.<name>.training.code) becomes its own image, built
    by `pulumi up` FROM the platform training image by digest; its Job runs that image with the
    training contract's environment (no MNIST-only flags)."""
    models = cfg(stack)["mlplatform:models"]
    coded = {m: e["training"]["code"] for m, e in models.items() if (e.get("training") or {}).get("code") and not e.get("source")}
    images = {r.name: r.raw for r in result.of_type("docker-build:index:Image")}
    if not coded:
        assert not [n for n in images if "-train-" in n], f"{stack}: a model image without a model"
        return
    (training,) = [i for n, i in images.items() if n.endswith("-images-training")]
    for model, folder in coded.items():
        (img,) = [i for n, i in images.items() if n.endswith(f"-images-train-{model}")]
        assert img["context"]["location"] == folder
        assert img["dockerfile"]["location"] == (
            (folder + "/Dockerfile") if (ROOT / folder / "Dockerfile").exists() else "training/model.Dockerfile"
        )
        base = img["buildArgs"]["BASE_IMAGE"]
        assert base.startswith(training["tags"][0] + "@sha256:"), base  # FROM exactly the training image that was pushed
        jobs = [j for j in job_records(result) if j.raw["metadata"]["labels"].get("mlplatform.io/model") == model]
        assert jobs, f"{stack}: no training Job for {model}"
        for j in jobs:
            (c,) = j.raw["spec"]["template"]["spec"]["containers"]
            assert c["image"].startswith(img["tags"][0] + "@sha256:"), c["image"]
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert "TRAIN_ARCH" not in env and "TRAIN_MIN_ACCURACY" not in env  # the MNIST trainer's flags
            gate = models[model]["training"].get("gateMin")
            assert env.get("TRAIN_GATE_MIN") == (str(gate) if gate is not None else None)


def test_model_image_tag_follows_its_folder_and_the_training_image(tmp_path, monkeypatch):
    from components.services import images

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "train.py").write_text("print('v1')\n")
    a = images.image_tag(folder, "training:ctx-1|training/model.Dockerfile|FROM")
    assert a == images.image_tag(folder, "training:ctx-1|training/model.Dockerfile|FROM")
    assert a != images.image_tag(folder, "training:ctx-2|training/model.Dockerfile|FROM")  # a new training image rebuilds it
    (folder / "train.py").write_text("print('v2')\n")
    assert a != images.image_tag(folder, "training:ctx-1|training/model.Dockerfile|FROM")  # so does a change to its code


def test_checkpoints_are_keyed_by_the_jobs_uid_not_its_guessable_name():
    """A CronJob's next Job name can be guessed: a run that planted ``checkpoints/<model>/<that name>/state.json``
    chose the weights the next run resumed from (issue 24 item 8 review). The directory is the Job's UID,
    which the Job controller labels every pod with and no earlier run can know."""
    import re
    import uuid

    from components.models.training_job import train_env

    env = train_env("mnist", TrainingConfig(schedule="0 3 * * *"), "s3://b", None)
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    assert by_name["JOB_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}
    assert names.index("JOB_UID") < names.index("TRAIN_CHECKPOINT_DIR")  # Kubernetes expands $(VAR) of earlier entries only

    def pod_dir(job_name: str) -> str:  # what the pod sees: the kubelet expands $(VAR)
        pod = {"JOB_NAME": job_name, "JOB_UID": str(uuid.uuid4())}
        return re.sub(r"\$\((\w+)\)", lambda m: pod[m.group(1)], by_name["TRAIN_CHECKPOINT_DIR"]["value"])

    planted = "s3://b/checkpoints/mnist/train-mnist-28999999"  # the next scheduled Job's name, guessed
    ours = pod_dir("train-mnist-28999999")
    assert ours.startswith("s3://b/checkpoints/mnist/") and ours != planted and ours != pod_dir("train-mnist-28999999")

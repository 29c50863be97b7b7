"""PyTorch on the training contract, in-process (fast): DDP's rendezvous from the pod's index, the
epoch shards, checkpoints, and the ONNX export check that refuses a publish on a planted mismatch.
The multi-process runs (two workers on loopback, a killed worker, SIGTERM) are in test_torch_distributed.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import cluster as clusters  # noqa: E402
from training import contract, onnx_contract, onnx_export, registry, torch_contract  # noqa: E402


def k8s(index: int, workers: int = 3) -> clusters.Cluster:
    env = {
        "TRAIN_WORKERS": str(workers),
        "JOB_COMPLETION_INDEX": str(index),
        "JOB_NAME": "mnist-torch-7",
        "TRAIN_WORKER_SERVICE": "mnist-torch-workers",
    }
    return clusters.from_env(env)


def test_rendezvous_is_worker_zero_of_the_same_cluster_spec_tensorflow_gets():
    spec = k8s(2).tf_config["cluster"]["worker"]
    env = torch_contract.torch_env(k8s(2))
    assert f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}" == spec[0] == "mnist-torch-7-0.mnist-torch-workers:2222"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("2", "3", "0", "1")


def test_one_process_per_gpu_ranks_are_pod_major_and_every_process_agrees_on_the_master():
    envs = [torch_contract.torch_env(k8s(i), local, 4) for i in range(3) for local in range(4)]
    assert [int(e["RANK"]) for e in envs] == list(range(12))
    assert {e["WORLD_SIZE"] for e in envs} == {"12"}
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs}) == 1
    with pytest.raises(clusters.ClusterError, match="local rank 4 out of range"):
        torch_contract.torch_env(k8s(0), 4, 4)


def test_loopback_layout_and_single_worker():
    loop = clusters.from_env(
        {
            "TRAIN_WORKERS": "2",
            "TRAIN_WORKER_INDEX": "1",
            "TRAIN_WORKER_HOST": "127.0.0.1",
            "TRAIN_WORKER_PORT": "31000",
            "TRAIN_WORKER_PORT_STEP": "1",
        }
    )
    assert torch_contract.torch_env(loop) == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "31000",
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
    }
    single = torch_contract.torch_env(clusters.from_env({}), 1, 2, port=2300)
    assert (single["MASTER_ADDR"], single["MASTER_PORT"], single["RANK"], single["WORLD_SIZE"]) == ("127.0.0.1", "2300", "1", "2")


def run_for(tmp_path, world: int = 1, rank: int = 0, **kw) -> torch_contract.TorchRun:
    env = {"MLPLATFORM_STORE": f"file://{tmp_path}/store", "TRAIN_CHECKPOINT_DIR": str(tmp_path / "ck"), **kw}
    if world > 1:
        env |= {"TRAIN_WORKERS": str(world), "TRAIN_WORKER_INDEX": str(rank), "TRAIN_WORKER_HOST": "127.0.0.1"}
    return torch_contract.TorchRun.from_env("toy", gate=contract.Gate("test_accuracy", 0.5), env=env)


def test_epoch_shards_are_disjoint_equal_and_replayed_after_a_resume(tmp_path):
    runs = [run_for(tmp_path, 3, r) for r in range(3)]
    shards = [r.shard(100, epoch=4) for r in runs]
    assert [len(s) for s in shards] == [33, 33, 33]  # every replica the same number of steps
    assert len(set(np.concatenate(shards).tolist())) == 99
    assert np.array_equal(runs[1].shard(100, 4), shards[1])  # same epoch, same order (a resumed epoch)
    assert not np.array_equal(runs[1].shard(100, 5), shards[1])


def test_the_run_is_the_contracts_with_torch_replicas(tmp_path):
    run = run_for(tmp_path, TRAIN_BATCH_SIZE="16", TRAIN_LEARNING_RATE="0.01", TRAIN_LOCAL_RANK="1", TRAIN_LOCAL_WORLD="4")
    assert (run.rank, run.world_size, run.replicas, run.is_chief) == (1, 4, 4, False)
    assert (run.global_batch_size, run.learning_rate) == (64, pytest.approx(0.02))  # contract.scaled
    assert run.strategy is None and not run.checkpoint.writer
    with pytest.raises(contract.ContractError, match="TRAIN_LOCAL_RANK must be an integer"):
        run_for(tmp_path, TRAIN_LOCAL_RANK="x")


def toy():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return net, torch.optim.Adam(net.parameters(), lr=0.05)


def test_checkpoints_each_epoch_and_a_new_run_resumes_weights_and_optimizer(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)

    def loss(n, a, b):
        return torch.nn.functional.cross_entropy(n(a), b)

    first = run_for(tmp_path, TRAIN_EPOCHS="2", TRAIN_BATCH_SIZE="16")
    model, opt, state = first.restore(toy)
    assert first.train(model, opt, loss, (x, y), state) is None
    saved = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert saved["epoch"] == 2 and saved["checkpoint"] == "epoch-0002.pt" and len(saved["history"]["loss"]) == 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt", "state.json"]

    again = run_for(tmp_path, TRAIN_EPOCHS="3", TRAIN_BATCH_SIZE="16")
    model2, opt2, state2 = again.restore(toy)
    assert state2.epoch == 2
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"] == 8
    assert again.train(model2, opt2, loss, (x, y), state2) is None
    assert state2.epoch == 3 and json.loads((tmp_path / "ck" / "state.json").read_text())["checkpoint"] == "epoch-0003.pt"


def small_cnn(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5), torch.nn.Softmax(dim=1)
    ).eval()


IMAGES = np.random.default_rng(1).random((16, 1, 8, 8), dtype=np.float32)


def test_the_export_has_a_dynamic_batch_and_matches_the_native_model():
    model = small_cnn(0)
    graph = onnx_export.export_torch(model, {"image": IMAGES[:2]}, ["probs"])
    assert onnx_export.signature(graph)["serving_default"] == {
        "inputs": {"image": ("float32", (None, 1, 8, 8))},
        "outputs": {"probs": ("float32", (None, 5))},
    }
    diff = onnx_export.check_equal(graph, onnx_export.torch_native(model, ["probs"]), {"image": IMAGES})
    assert diff <= onnx_export.TOLERANCE


def test_a_planted_mismatch_refuses_the_publish_with_one_line(tmp_path):
    model = small_cnn(0)
    graph = onnx_export.export_torch(model, {"image": IMAGES[:2]}, ["probs"])
    with torch.no_grad():  # the plant: the native model's bias moves after the export
        model[3].bias[2] += 0.05
    run = run_for(tmp_path)
    with pytest.raises(onnx_export.ExportMismatch) as err:
        run.publish_onnx(graph, onnx_export.torch_native(model, ["probs"]), {"image": IMAGES}, {"test_accuracy": 0.9})
    message = str(err.value)
    assert "\n" not in message and "output 'probs' differs from the native model by" in message and "nothing published" in message
    assert registry.versions(f"file://{tmp_path}/store", "toy") == []
    # an output the graph lacks is a mismatch too, not a pass on the outputs both have
    with pytest.raises(onnx_export.ExportMismatch, match="outputs"):
        onnx_export.check_equal(
            graph, lambda i: {"probs": model(torch.from_numpy(i["image"])).detach().numpy(), "extra": np.zeros(16)}, {"image": IMAGES}
        )


def test_publish_torch_writes_onnx_weights_and_the_format(tmp_path):
    model = small_cnn(3)
    run = run_for(tmp_path)
    uri = run.publish_torch(model, {"image": IMAGES}, {"test_accuracy": 0.9}, output_names=["probs"])
    version = uri.rsplit("/", 1)[1]
    meta = json.loads((tmp_path / "store" / "models" / "toy" / version / "metadata.json").read_text())
    assert meta["format"] == "onnx" and meta["native"]["weights"] == "model.pt" and meta["native"]["framework"] == "pytorch"
    assert meta["onnx"]["checked_inputs"] == 16 and meta["onnx"]["max_abs_diff"] <= meta["onnx"]["tolerance"] == 1e-4
    weights = torch.load(tmp_path / "store" / "models" / "toy" / version / "model.pt", weights_only=True)
    again = small_cnn(9)
    again.load_state_dict(weights)
    assert torch.equal(again(torch.from_numpy(IMAGES)), model(torch.from_numpy(IMAGES)))


def test_a_graph_that_breaks_the_onnx_champions_signature_is_not_published(tmp_path):
    run = run_for(tmp_path)
    run.publish_torch(small_cnn(0), {"image": IMAGES}, {"test_accuracy": 0.9}, output_names=["probs"])
    with pytest.raises(contract.SignatureBreak, match=r"output 'probabilities'|outputs \['probs'\] became \['probabilities'\]"):
        run_for(tmp_path).publish_torch(small_cnn(1), {"image": IMAGES}, {"test_accuracy": 0.9}, output_names=["probabilities"])
    assert len(registry.versions(f"file://{tmp_path}/store", "toy")) == 1
    champ = onnx_contract.champion_onnx_signature(f"file://{tmp_path}/store", "toy")
    assert champ is not None and champ[1]["serving_default"]["outputs"] == {"probs": ("float32", (None, 5))}


def test_the_example_trains_publishes_and_the_server_answers_as_the_pytorch_model(tmp_path, small_mnist, monkeypatch):
    """models/mnist_torch in one process on real MNIST: train -> gate -> publish (ONNX checked, the
    native weights beside it) -> the real server (python -m serving) runs the version in ONNX Runtime
    and answers as the PyTorch model with its published weights does."""
    import importlib.util
    import urllib.request

    from tests.conftest import ROOT
    from tests.serving.conftest import ServerProcess

    for var in [k for k in os.environ if k.startswith("TRAIN_")]:
        monkeypatch.delenv(var)
    spec = importlib.util.spec_from_file_location("mnist_torch_train", ROOT / "models" / "mnist_torch" / "train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    store = f"file://{tmp_path}/store"
    args = ["--data", str(small_mnist), "--store", store, "--epochs", "1", "--limit-train", "600", "--min-accuracy", "0.3"]
    assert example.cli(args) == contract.EXIT_OK
    version = registry.latest(store, "mnist-torch")
    vdir = tmp_path / "store" / "models" / "mnist-torch" / version
    meta = json.loads((vdir / "metadata.json").read_text())
    assert meta["format"] == "onnx" and meta["onnx"]["checked_inputs"] == 300 and meta["onnx"]["max_abs_diff"] <= 1e-4
    assert meta["gate"]["passed"] and meta["metrics"]["test_accuracy"] >= 0.3 and meta["native"]["weights"] == "model.pt"
    registry.verify(store, "mnist-torch", version)
    net = example.Net()
    net.load_state_dict(torch.load(vdir / "model.pt", weights_only=True))
    with np.load(small_mnist) as d:
        images = example.images(d["x_test"][:4])
    want = example.serving_module(net).eval()(torch.from_numpy(images)).detach().numpy()
    server = ServerProcess(store, "--model-name", "mnist-torch")
    try:
        server.wait_ready()
        meta = json.loads(urllib.request.urlopen(f"{server.url}/v2/models/mnist-torch", timeout=30).read())
        assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == [version]
        body = json.dumps({"instances": images.tolist()}).encode()
        req = urllib.request.Request(f"{server.url}/v1/models/mnist-torch:predict", data=body, headers={"Content-Type": "application/json"})
        got = np.array(json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"])
        # the TensorFlow MNIST model's request, unchanged (same signature: image -> output_0)
        v2 = json.loads((ROOT / "examples" / "mnist-infer-v2.json").read_text())
        req = urllib.request.Request(f"{server.url}/v2/models/mnist-torch/infer", data=json.dumps(v2).encode())
        (out,) = json.loads(urllib.request.urlopen(req, timeout=30).read())["outputs"]
    finally:
        server.stop()
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, want, atol=1e-4)
    (tensor,) = v2["inputs"]
    rows = np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    assert out["name"] == "output_0" and out["shape"] == [len(rows), 10]
    native = example.serving_module(net).eval()(torch.from_numpy(rows)).detach().numpy()
    np.testing.assert_allclose(np.reshape(out["data"], (len(rows), 10)), native, atol=1e-4)

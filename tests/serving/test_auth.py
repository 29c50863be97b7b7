"""Optional API keys on the predict routes (issue 13 item 4), in process against a real model."""

from __future__ import annotations

import os

from tests.serving.test_api import IMAGE, run, with_client

BODY = {"instances": [IMAGE.tolist()]}
V2 = {"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": IMAGE.reshape(-1).tolist()}]}


def secret_file(tmp_path, *keys: str):
    """Like a mounted Secret: the file is a symlink into a ..data directory that is swapped atomically."""
    n = len(list(tmp_path.glob("..data-*")))
    data = tmp_path / f"..data-{n}"
    data.mkdir()
    (data / "keys").write_text("# one key per line\n" + "\n".join(keys) + "\n")
    tmp = tmp_path / "..data.tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, tmp_path / "..data")
    link = tmp_path / "api-keys"
    if not link.is_symlink():
        link.symlink_to("..data/keys")
    return str(link)


def test_predict_needs_a_valid_key_and_the_rest_stays_open(store, tmp_path):
    path = secret_file(tmp_path, "k-one", "k-two")

    async def fn(client, server):
        out = {}
        out["none"] = await client.post("/v1/models/mnist:predict", json=BODY)
        out["wrong"] = await client.post("/v1/models/mnist:predict", json=BODY, headers={"Authorization": "Bearer k-three"})
        out["wrong scheme"] = await client.post("/v1/models/mnist:predict", json=BODY, headers={"Authorization": "Basic k-one"})
        out["bearer"] = await client.post("/v1/models/mnist:predict", json=BODY, headers={"Authorization": "Bearer k-one"})
        out["x-api-key"] = await client.post("/v1/models/mnist:predict", json=BODY, headers={"X-API-Key": "k-two"})
        out["v2 none"] = await client.post("/v2/models/mnist/infer", json=V2)
        out["v2 key"] = await client.post("/v2/models/mnist/infer", json=V2, headers={"X-API-Key": "k-two"})
        for path_ in ("/healthz", "/readyz", "/v1/models/mnist", "/v1/models/mnist/metadata", "/v2/health/ready", "/v2/models/mnist"):
            out[path_] = await client.get(path_)
        return out

    r = run(with_client(store, fn, api_keys_file=path))
    assert r["none"].status_code == 401 and "missing API key" in r["none"].json()["error"]
    assert r["none"].headers["www-authenticate"].startswith("Bearer")
    assert r["wrong"].status_code == 401 and r["wrong"].json()["error"] == "invalid API key"
    assert r["wrong scheme"].status_code == 401 and "missing API key" in r["wrong scheme"].json()["error"]
    assert r["bearer"].status_code == 200 and r["x-api-key"].status_code == 200
    assert r["v2 none"].status_code == 401 and r["v2 key"].status_code == 200
    for path_ in ("/healthz", "/readyz", "/v1/models/mnist", "/v1/models/mnist/metadata", "/v2/health/ready", "/v2/models/mnist"):
        assert r[path_].status_code == 200, path_


def test_keys_are_reloaded_when_the_secret_changes(store, tmp_path):
    path = secret_file(tmp_path, "old-key")

    async def fn(client, server):
        server.api_keys.check_every_s = 0
        before = await client.post("/v1/models/mnist:predict", json=BODY, headers={"X-API-Key": "old-key"})
        secret_file(tmp_path, "new-key")  # the kubelet swaps ..data
        old = await client.post("/v1/models/mnist:predict", json=BODY, headers={"X-API-Key": "old-key"})
        new = await client.post("/v1/models/mnist:predict", json=BODY, headers={"X-API-Key": "new-key"})
        return before.status_code, old.status_code, new.status_code

    assert run(with_client(store, fn, api_keys_file=path)) == (200, 401, 200)


def test_no_keys_file_means_no_authentication(store):
    async def fn(client, server):
        return (await client.post("/v1/models/mnist:predict", json=BODY)).status_code

    assert run(with_client(store, fn)) == 200

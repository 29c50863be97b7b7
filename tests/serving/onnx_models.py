"""Real ONNX models for the server's tests, made here as their frameworks export them (issue 28):
a PyTorch network exported with ``torch.onnx`` (dynamic batch dimension), a scikit-learn pipeline
converted with skl2onnx (named inputs of different element types), a PyTorch network with a fixed
batch dimension; each in a registry version's layout (``model.onnx`` + ``metadata.json``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def torch_cnn_bytes(seed: int = 0, classes: int = 10, dynamic: bool = True, output: str = "output_0") -> bytes:
    """A small CNN on 28x28x1 images (the MNIST contract: input ``images`` [-1, 28, 28, 1] float32,
    output softmax ``output_0`` [-1, classes]), exported by the TorchScript exporter with
    ``dynamic_axes`` naming the batch dimension (a fixed batch of 1 without)."""
    import torch

    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 5)
            self.fc = torch.nn.Linear(4 * 12 * 12, classes)

        def forward(self, images):
            x = torch.relu(self.conv(images.permute(0, 3, 1, 2)))  # NHWC as clients send it (the Keras layout)
            x = torch.nn.functional.max_pool2d(x, 2).flatten(1)
            return torch.softmax(self.fc(x), dim=1)

    buf = io.BytesIO()
    axes = {"images": {0: "batch"}, output: {0: "batch"}} if dynamic else None
    torch.onnx.export(
        Net().eval(), (torch.rand(1, 28, 28, 1),), buf, input_names=["images"], output_names=[output], dynamic_axes=axes, dynamo=False
    )
    return buf.getvalue()


def torch_fixed_bytes(seed: int = 1) -> bytes:
    """A linear layer on a fixed batch of one: input ``x`` [1, 4] float32, output ``y`` [1, 3]."""
    import torch

    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.onnx.export(torch.nn.Linear(4, 3).eval(), (torch.rand(1, 4),), buf, input_names=["x"], output_names=["y"], dynamo=False)
    return buf.getvalue()


def sklearn_pipeline_bytes(seed: int = 0) -> bytes:
    """A scikit-learn pipeline over four named inputs of three element types (float ``age`` and
    ``income``, string ``city``, int64 ``rooms``, each [-1, 1]): scaling and one-hot encoding in a
    ColumnTransformer, then logistic regression; outputs ``label`` int64 [-1] and ``probabilities``
    float32 [-1, 2] (ZipMap off: a tensor, not a list of maps)."""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(seed)
    n = 300
    df = pd.DataFrame(
        {
            "age": (rng.random(n) * 80).astype(np.float32),
            "income": rng.random(n).astype(np.float32),
            "city": rng.choice(["paris", "oslo", "rome"], n),
            "rooms": rng.integers(1, 6, n).astype(np.int64),
        }
    )
    y = ((df.age > 40) ^ (df.city == "oslo")).astype(int)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("int", StandardScaler(), ["rooms"]),
        ]
    )
    clf = LogisticRegression()
    pipe = Pipeline([("pre", pre), ("clf", clf)]).fit(df, y)
    types = [
        ("age", FloatTensorType([None, 1])),
        ("income", FloatTensorType([None, 1])),
        ("city", StringTensorType([None, 1])),
        ("rooms", Int64TensorType([None, 1])),
    ]
    return convert_sklearn(pipe, initial_types=types, options={id(clf): {"zipmap": False}}, target_opset=17).SerializeToString()


def version_dir(path: Path, onnx: bytes, version: str = "v1") -> Path:
    """``onnx`` as a model folder the registry publishes (its format recorded at publish)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(onnx)
    (path / "metadata.json").write_text(json.dumps({"version": version}))
    return path


def reference(onnx: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime called in process on the same graph: what every protocol form must answer."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))

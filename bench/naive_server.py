"""The baseline the seed's article implies: Flask + ``model.predict`` per request (for the benchmark only).

python -m bench.naive_server MODEL_DIR PORT
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import keras
    import numpy as np
    from flask import Flask, jsonify, request

    model = keras.models.load_model(os.path.join(sys.argv[1], "model.keras"))
    app = Flask(__name__)

    @app.post("/v1/models/mnist:predict")
    def predict():
        x = np.asarray(request.get_json()["instances"], dtype="float32").reshape(-1, 28, 28, 1)
        return jsonify({"predictions": model.predict(x, verbose=0).tolist()})

    @app.get("/healthz")
    def health():
        return "ok"

    app.run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)


if __name__ == "__main__":
    main()

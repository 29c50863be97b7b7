# A model's own image: the platform's training image (training/Dockerfile: TensorFlow, the training
# contract, `python -m training` as the entrypoint) plus this folder. BASE_IMAGE is that image's
# reference; the TrainingJob runs this image with the contract's TRAIN_* environment.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

USER 0
COPY requirements.txt /app/model/requirements.txt
RUN python -m pip install --no-cache-dir -r /app/model/requirements.txt
COPY --chown=root:root . /app/model/
USER 10001
ENV TRAIN_ENTRYPOINT=/app/model/train.py

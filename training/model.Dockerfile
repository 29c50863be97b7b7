# A model's own training image, built by `pulumi up` for every catalogue entry with `training.code`
# (components/services/images.py): the platform's training image (training/Dockerfile: TensorFlow, the
# training contract, `python -m training` as the entrypoint) plus the model's folder as build
# context. BASE_IMAGE is the platform image's reference. A folder with a Dockerfile of its own is
# built with that one instead (start it FROM ${BASE_IMAGE} as this one does).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

USER 0
COPY --chown=root:root . /app/model/
# The folder's own dependencies, if it lists any (scikit-learn for models/diabetes).
RUN if [ -f /app/model/requirements.txt ]; then python -m pip install --no-cache-dir -r /app/model/requirements.txt; fi
USER 10001
ENV TRAIN_ENTRYPOINT=/app/model/train.py

#!/usr/bin/env bash
# Registers the buildx builder NAME that the stack's `registry.builder` names, if it is not registered
# yet, so Pulumi's docker-build provider (which looks builders up by name in the buildx store,
# ~/.docker/buildx) finds it. Pulumi's docker-build provider supports the docker-container, kubernetes
# and remote drivers only, and only they build several platforms at once (registry.platforms):
#   BUILDKIT_HOST set (the Jenkins builder agent: its rootless buildkitd sidecar on
#   tcp://127.0.0.1:1234; a GitLab job with a BuildKit service)  -> driver `remote` to that daemon
#   otherwise (a laptop, a GitHub runner: a local Docker engine)  -> driver `docker-container`
# usage: builder.sh NAME
set -euo pipefail
name=${1:?usage: builder.sh NAME, the registry.builder of the stacks}
if command -v buildx >/dev/null; then bx=(buildx)
elif command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then bx=(docker buildx)
else echo "builder: buildx not found: run ci/toolbox/install-tools.sh (or use the CI toolbox image)" >&2; exit 1; fi
if "${bx[@]}" inspect "$name" >/dev/null 2>&1; then
  echo "builder: $name is registered"
elif [ -n "${BUILDKIT_HOST:-}" ]; then
  "${bx[@]}" create --name "$name" --driver remote "$BUILDKIT_HOST"
else
  # network=host: the build container pushes to the host's localhost registries (kind's localhost:5001).
  "${bx[@]}" create --name "$name" --driver docker-container --driver-opt network=host
fi
# Fails here, with buildx's own message, when the daemon is unreachable: not 20 minutes into `pulumi up`.
"${bx[@]}" inspect --bootstrap "$name" >/dev/null

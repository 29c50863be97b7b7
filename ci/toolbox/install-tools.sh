#!/usr/bin/env bash
# The deploy tools CI needs beyond Python and make, at pinned versions, each download checked against
# its pinned SHA-256 before it is installed (nothing unchecked lands on PATH). One script for every
# forge: ci/toolbox/Dockerfile runs it to build the toolbox image (GitLab jobs, Jenkins agents), and
# the GitHub workflows run it on their runners, so every pipeline deploys with the same binaries.
#   pulumi   the engine of `make up-ci` (and its python language host)
#   kubectl  `make train-wait` / `make deliver` (client within one minor of the clusters' 1.33)
#   buildx   registers the BuildKit builder `registry.builder` names (ci/toolbox/builder.sh); Pulumi's
#            docker-build provider then sends the image builds there
# The AWS CLI (the EKS kubeconfig is exec-based: `aws eks get-token`) comes from Debian's awscli
# package in the Dockerfile (apt checks it against the signed archive); GitHub's runners ship one.
# Published checksums: Pulumi https://get.pulumi.com/releases/sdk/pulumi-3.255.0-checksums.txt (the same
# pins as ops/local_up.py, a test keeps them equal); kubectl https://dl.k8s.io/release/v1.33.0/bin/linux/
# <arch>/kubectl.sha256; buildx https://github.com/docker/buildx/releases/download/v0.25.0/checksums.txt.
# Values as pinned by independent public build files (docker-library's docker image for buildx, several
# CI scripts for kubectl); no network here re-hashed them: a wrong value fails the build, never passes it.
#
# usage: install-tools.sh [PREFIX]   (default /usr/local/bin; needs curl, tar, sha256sum)
set -euo pipefail

PULUMI_VERSION=3.255.0
PULUMI_SHA256_amd64=cf559568e2c32f7fae56ea3de8ae5fa48973ba8c5aa9dd2b3dc0c8898fe50dba
PULUMI_SHA256_arm64=699fbc6ea848d997e9b3645487f108d27b1b55ec807c7576406131e6e080f0e3
KUBECTL_VERSION=v1.33.0
KUBECTL_SHA256_amd64=9efe8d3facb23e1618cba36fb1c4e15ac9dc3ed5a2c2e18109e4a66b2bac12dc
KUBECTL_SHA256_arm64=48541d119455ac5bcc5043275ccda792371e0b112483aa0b29378439cf6322b9
BUILDX_VERSION=v0.25.0
BUILDX_SHA256_amd64=4104d79a791a8744c0b43fd5bd0a6172dff29040c5229946a1cdb2d27b0b5bfa
BUILDX_SHA256_arm64=f07063844bb750172c1f25cef61b07a8314d24bedffc015517b3ec4016b16de8

prefix=${1:-/usr/local/bin}
case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 pulumi_arch=x64 ;;
  aarch64 | arm64) arch=arm64 pulumi_arch=arm64 ;;
  *) echo "install-tools: no pinned tools for $(uname -m) (amd64 and arm64 only)" >&2; exit 1 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch URL SHA256 FILE: download, then refuse anything whose digest is not the pinned one.
fetch() {
  curl -fsSL --retry 3 -o "$3" "$1"
  if ! echo "$2  $3" | sha256sum -c --status -; then
    echo "install-tools: $1: SHA-256 $(sha256sum "$3" | cut -d' ' -f1) is not the pinned $2; nothing installed" >&2
    exit 1
  fi
}

sha() { local var="$1_SHA256_${arch}"; echo "${!var}"; }

fetch "https://get.pulumi.com/releases/sdk/pulumi-v${PULUMI_VERSION}-linux-${pulumi_arch}.tar.gz" "$(sha PULUMI)" "$work/pulumi.tgz"
fetch "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${arch}/kubectl" "$(sha KUBECTL)" "$work/kubectl"
fetch "https://github.com/docker/buildx/releases/download/${BUILDX_VERSION}/buildx-${BUILDX_VERSION}.linux-${arch}" "$(sha BUILDX)" "$work/buildx"

mkdir -p "$prefix"
tar -xzf "$work/pulumi.tgz" -C "$work"
install -m 0755 "$work"/pulumi/* "$prefix/"
install -m 0755 "$work/kubectl" "$prefix/kubectl"
# buildx runs standalone (no Docker CLI or daemon needed for a remote builder); a Docker CLI that is
# present finds it as its plugin too.
install -m 0755 "$work/buildx" "$prefix/buildx"
if [ -w /usr/local/lib ] || [ "$(id -u)" = 0 ]; then
  mkdir -p /usr/local/lib/docker/cli-plugins && ln -sf "$prefix/buildx" /usr/local/lib/docker/cli-plugins/docker-buildx
fi
"$prefix/pulumi" version >/dev/null
"$prefix/kubectl" version --client >/dev/null
"$prefix/buildx" version >/dev/null
echo "install-tools: pulumi ${PULUMI_VERSION}, kubectl ${KUBECTL_VERSION}, buildx ${BUILDX_VERSION} in ${prefix}"

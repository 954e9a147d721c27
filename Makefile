# GGnet Makefile. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN               ?= $(CURDIR)/bin

# Tool versions: every tool GGnet builds is pinned here and only here. Each is
# built from the Go module proxy into bin/ once. The hack/ scripts get them
# from the environment (exported below) or, run by hand, from
# `make print-<VARIABLE>`.
export CONTROLLER_GEN_VERSION ?= v0.23.0
export GOLANGCI_LINT_VERSION  ?= v2.15.0
export HELM_VERSION           ?= v4.3.1
# promtool checks and unit-tests the chart's alerts: a version of the
# github.com/prometheus/prometheus module (hack/promtool.sh builds it).
export PROMTOOL_VERSION       ?= v0.316.0
# kube-apiserver and kubectl (the envtest API server) are the Kubernetes release
# of the client libraries: k8s.io/api v0.N.M in go.mod gives v1.N.M. etcd is the
# version that release requires in its go.mod (hack/envtest-bins.sh reads it).
ifeq ($(strip $(ENVTEST_K8S_VERSION)),)
ENVTEST_K8S_VERSION := $(patsubst v0.%,v1.%,$(shell go list -m -f '{{.Version}}' k8s.io/api))
endif
ifeq ($(strip $(ENVTEST_K8S_VERSION)),)
$(error cannot tell the Kubernetes version from go.mod: `go list -m k8s.io/api` failed — is Go 1.26 on PATH?)
endif
export ENVTEST_K8S_VERSION

CONTROLLER_GEN    ?= $(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
GOLANGCI_LINT     ?= $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
GO_TEST_FLAGS     ?=
FUZZTIME          ?= 150000x
FUZZTIME_LONG     ?= 10000000x

export PATH := $(BIN):$(PATH)

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

##@ Main jobs

.PHONY: demo
demo: ## Run the local lab: a QEMU VM netboots from an image through GGnet (root; KEEP=1 leaves it running; FIRMWARE=uefi boots the real OS through OVMF, IMAGE=os on BIOS).
	FIRMWARE=$(FIRMWARE) IMAGE=$(IMAGE) ./hack/demo.sh

.PHONY: demo-down
demo-down: ## Tear down a lab left by make demo KEEP=1.
	./hack/demo-down.sh

.PHONY: test
test: deps vet envtest-bins promtool ## Install what is missing, then run go vet and every test with -race.
	KUBEBUILDER_ASSETS="$$(./hack/envtest-bins.sh)" ./hack/test.sh $(GO_TEST_FLAGS)

.PHONY: fault
fault: deps envtest-bins ## Run the fault suite's long form and print its table (root; FAULT_ITERATIONS=20, FAULT_SEED=<seed> reruns one, FAULT_VMS=2).
	KUBEBUILDER_ASSETS="$$(./hack/envtest-bins.sh)" go test -count=1 -timeout 6h -v ./test/e2e/ \
		-ginkgo.label-filter=fault -ginkgo.v -fault.iterations=$${FAULT_ITERATIONS:-20} -fault.seed=$${FAULT_SEED:-0} -fault.vms=$${FAULT_VMS:-2}

.PHONY: bench-boot
bench-boot: deps envtest-bins build ## Boot benchmark: power-on to marker through GGnet against QEMU's slirp, same run (root; BENCH_BOOTS=5, BENCH_PATHS=ggnet,slirp,slirp-noipv6).
	go build -o $(BIN)/bench-boot ./test/benchmark/boot
	KUBEBUILDER_ASSETS="$$(./hack/envtest-bins.sh)" $(BIN)/bench-boot -bin $(BIN) -n $${BENCH_BOOTS:-5} -paths $${BENCH_PATHS:-ggnet,slirp,slirp-noipv6}

.PHONY: bench-sessions
bench-sessions: deps envtest-bins build ## Controllers at scale: BENCH_SESSIONS (1000) sessions at once against a real API server; Ready times, API writes per session, CPU, manager RSS and pprof (BENCH_ARGS adds flags, e.g. -audit).
	go build -o $(BIN)/bench-sessions ./test/benchmark/sessions
	KUBEBUILDER_ASSETS="$$(./hack/envtest-bins.sh)" $(BIN)/bench-sessions -n $${BENCH_SESSIONS:-1000} -manager $(BIN)/manager $${BENCH_ARGS:-}

.PHONY: bench-latency
bench-latency: deps envtest-bins build ## Session latency on a quiet cluster: create-to-Ready and stop-to-Stopped, one session after another, through the real storage agent and tgtd (root; BENCH_SESSIONS=100).
	go build -o $(BIN)/bench-latency ./test/benchmark/latency
	KUBEBUILDER_ASSETS="$$(./hack/envtest-bins.sh)" $(BIN)/bench-latency -n $${BENCH_SESSIONS:-100} -bin $(BIN) $${BENCH_ARGS:-}

.PHONY: bench-storm
bench-storm: deps envtest-bins build ## Boot storm: N simulated PCs (DHCP, script, iSCSI CHAP login, 64 MiB read) against the real agents and tgtd (root; STORM_N=200, STORM_ARGS e.g. -boot-agents 2 -storage-nodes 3 -kill-boot-agent-at 50% -kill-storage-node-at 50%).
	go build -o $(BIN)/bench-storm ./test/benchmark/storm
	KUBEBUILDER_ASSETS="$$(./hack/envtest-bins.sh)" $(BIN)/bench-storm -bin $(BIN) -n $${STORM_N:-200} $${STORM_ARGS}

.PHONY: bench-capture
bench-capture: deps ## Capture of a 10 GiB sparse disk (2 GiB written) on a loop-mounted XFS: reflink clone and sparse-aware sha256 against cp and sha256sum, same run (root; BENCH_ARGS e.g. -disk-gib 10 -written-gib 2).
	go run ./test/benchmark/capture $${BENCH_ARGS:--disk-gib 10 -written-gib 2}

.PHONY: bench-replication
bench-replication: deps ## Replication of a 10 GiB sparse replica (2 GiB of data) between two storage stores over loopback, against a plain HTTP GET and cp --sparse=always, same run (root; BENCH_ARGS e.g. -size-gib 10 -data-gib 2 -bandwidth 0).
	go run ./test/benchmark/replication $${BENCH_ARGS:--size-gib 10 -data-gib 2}

##@ Development

.PHONY: deps
deps: ## Install the Debian packages and Go tools the tests need (idempotent).
	./hack/deps.sh

.PHONY: build
build: ## Build the manager and the boot agent into bin/.
	CGO_ENABLED=0 go build -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=0 go build -o $(BIN)/bootagent ./cmd/bootagent

.PHONY: vet
vet: ## go vet ./...
	go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (.golangci.yml) on every package.
	$(GOLANGCI_LINT) run ./...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from the API types and markers.
	$(CONTROLLER_GEN) crd:maxDescLen=512 paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=ggnet-manager paths=./controllers/... output:rbac:artifacts:config=config/rbac/manager
	$(CONTROLLER_GEN) rbac:roleName=ggnet-boot-agent paths=./bootagent/agent/... output:rbac:artifacts:config=config/rbac/boot-agent
	$(CONTROLLER_GEN) rbac:roleName=ggnet-storage-agent paths=./bootagent/storage/... output:rbac:artifacts:config=config/rbac/storage-agent
	# The chart renders the same CRDs and roles.
	rm -f charts/ggnet/files/crds/*.yaml && cp config/crd/bases/*.yaml charts/ggnet/files/crds/
	mkdir -p charts/ggnet/files/rbac
	for r in manager boot-agent storage-agent; do cp config/rbac/$$r/role.yaml charts/ggnet/files/rbac/$$r.yaml; done
	# config/deploy is the chart rendered with defaults, for kustomize users.
	mkdir -p config/deploy
	$$(./hack/helm.sh) template ggnet charts/ggnet -n ggnet-system --set crds.install=false > config/deploy/ggnet.yaml

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code and the apply configurations the agents write status with.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	# Typed server-side apply (api/v1alpha1/applyconfiguration); stale files of a
	# removed type go first.
	rm -rf api/v1alpha1/applyconfiguration
	$(CONTROLLER_GEN) applyconfiguration:headerFile=hack/boilerplate.go.txt,omitToolVersion=true paths=./api/...

.PHONY: verify
verify: manifests generate ## Regenerate everything and lint; fail if the tree changed.
	# After the generators, also under make -j: lint type-checks what they wrote.
	$(MAKE) --no-print-directory lint
	go mod tidy
	# third_party/ keeps upstream's bytes (its PATCH.md lists what GGnet changed).
	gofmt -l $$(git ls-files '*.go' | grep -v '^third_party/') | (! grep .) || (echo "gofmt needed on the files above" && false)
	@if [ -n "$$(git status --porcelain)" ]; then git status --porcelain; git --no-pager diff --stat; echo "make verify: the tree is not clean after regenerating"; exit 1; fi

.PHONY: envtest-bins
envtest-bins: ## Build kube-apiserver and etcd from the Go module proxy into bin/k8s/ (once).
	./hack/envtest-bins.sh

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME_LONG executions each (about 5 minutes).
	./hack/fuzz.sh $(FUZZTIME_LONG)

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Build controller-gen into bin/ (once).

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Build golangci-lint into bin/ (once).

.PHONY: promtool
promtool: ## Build promtool into bin/ (once; test/helm builds it itself when missing).
	./hack/promtool.sh >/dev/null

.PHONY: print-%
print-%: ## Print a variable, e.g. make -s print-HELM_VERSION (the hack/ scripts read the tool versions so).
	@echo '$($*)'

$(CONTROLLER_GEN):
	mkdir -p $(BIN)
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(BIN)/controller-gen $(CONTROLLER_GEN)

# A few minutes the first time (about 300 modules).
$(GOLANGCI_LINT):
	mkdir -p $(BIN)
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $(GOLANGCI_LINT)

# Ferry's developer entry points. The two a fresh machine needs:
#   make demo   run Ferry end to end on a local real stack
#   make test   run every test (unit + integration on the real stack)
SHELL := /bin/bash
export FERRY_TOOLS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ferry/tools
export FERRY_TOOLS_BIN := $(FERRY_TOOLS_DIR)/bin
export PATH := $(FERRY_TOOLS_BIN):$(PATH)

GO_PKGS_UNIT = $(shell go list ./... | grep -v /integration)
# Stamped into both binaries (`ferry-broker version`, ferry_build_info).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS = -X github.com/ferry-secrets/ferry/internal/buildinfo.version=$(VERSION) -X github.com/ferry-secrets/ferry/internal/buildinfo.commit=$(COMMIT)
INTEGRATION_TIMEOUT ?= 40m

.PHONY: all tools build unit integration test lint generate generate-check demo bench clean fuzz

all: build unit

## tools: build the pinned tools (Vault, kube-apiserver, etcd, SPIRE, buf, grpcurl, helm) once into $(FERRY_TOOLS_DIR)
tools:
	bash tools/build.sh

## build: build ferry-broker and ferry-writer into bin/, stamped with VERSION and COMMIT
build:
	go build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

## unit: fast tests with no external processes
unit:
	go test -race -count=1 $(GO_PKGS_UNIT)

## integration: end-to-end tests against real Vault, kube-apiserver+etcd, SPIRE and PostgreSQL
integration: tools
	go test -count=1 -timeout $(INTEGRATION_TIMEOUT) -v ./integration/...

## fuzz: run every fuzz target for FUZZTIME each (CI: a short, fixed time)
FUZZTIME ?= 5s
FUZZ_TARGETS = ./broker/render:FuzzRender ./broker/config:FuzzParse ./internal/yamlconfig:FuzzDecode
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  go test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}" || exit 1; \
	done

## test: everything
test: generate-check unit fuzz integration

## generate: regenerate Go code from proto/
generate: tools
	buf generate

## generate-check: fail when the generated Go in proto/ differs from what the .proto files generate
generate-check: tools
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && buf generate -o $$tmp && \
	  for f in $$(cd $$tmp && find . -name '*.go'); do \
	    cmp -s $$tmp/$$f $$f || { echo "generated code is stale: $$f (run 'make generate')"; exit 1; }; \
	  done && echo "generated code is up to date"

## lint: vet, gofmt, buf lint and buf breaking against main
lint: tools
	go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	buf lint
	@if git rev-parse --verify -q main >/dev/null; then buf breaking --against '.git#branch=main'; fi

## demo: start Vault, etcd + kube-apiserver, SPIRE, the broker and a writer on loopback and carry a secret across
demo: tools build
	go run ./integration/demo

## bench: measure sync time, memory, load, latency, a broker restart and a fail-over on the real stack; writes BENCHMARKS.md
bench: tools
	go run ./integration/bench -out BENCHMARKS.md

clean:
	rm -rf bin/

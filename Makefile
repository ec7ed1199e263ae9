# pirun: see README.md. Every target runs as root where it touches the kernel.
GO      ?= go
TAGS    := containers_image_openpgp
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
ROOT    ?= /var/lib/pirun
STATE   ?= /run/pirun
BUSYBOX ?= /bin/busybox
IMAGE   := build/rpi-busybox-httpd.tar
N       ?= 100
PIRUN   := bin/pirun --root $(ROOT) --state $(STATE)

.PHONY: all build image demo test lint deps clean clean-test bench
all: build

## deps: install what a fresh Debian machine lacks (apt packages, Go modules)
deps:
	@missing=""; \
	for p in busybox-static iptables curl; do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" != 0 ]; then \
		echo "missing:$$missing (run as root, or install them, to run containers)"; \
	elif [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download

## build: bin/pirun
build:
	$(GO) build -tags $(TAGS) -trimpath -ldflags "$(LDFLAGS)" -o bin/pirun ./cmd/pirun

## image: build rpi-busybox-httpd:latest for this machine and import it into $(ROOT)
image: build
	@test -x $(BUSYBOX) || { echo "$(BUSYBOX) missing: run 'make deps' (Debian package busybox-static)"; exit 1; }
	@mkdir -p build
	$(GO) run -tags $(TAGS) ./internal/mkimage -busybox $(BUSYBOX) -o $(IMAGE) -name rpi-busybox-httpd:latest
	$(PIRUN) pull oci-archive:$(IMAGE)

## demo: spawn N (100) web servers, fetch a page from every one, remove them
demo: deps image
	PIRUN="$(PIRUN)" N=$(N) ./scripts/demo.sh

## test: unit and integration tests (integration tests need root; they skip otherwise)
test: deps build
	$(GO) test -tags $(TAGS) -count=1 -p 1 -timeout 30m ./...

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags $(TAGS) ./...

## clean-test: remove what a failed test left behind (test state, links, rules, cgroups)
clean-test:
	./scripts/clean-test.sh

clean:
	rm -rf bin build

## bench: start N (100) containers until all answer; memory per container; teardown
bench: deps build
	N=$(N) $(GO) test -tags $(TAGS) -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/

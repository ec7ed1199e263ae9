# pirun: see README.md. Every target runs as root where it touches the kernel.
GO      ?= go
# containers_image_openpgp: containers/image verifies signatures in Go, not through
# gpgme (cgo). runc_nocriu: leaves libcontainer's checkpoint/restore (CRIU, which
# pirun does not offer) out of the binary, about 0.7 MB. seccomp: libcontainer loads
# Docker's default system call filter through libseccomp (Debian's libseccomp-dev).
TAGS    := containers_image_openpgp,runc_nocriu,seccomp
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
ROOT    ?= /var/lib/pirun
STATE   ?= /run/pirun
BUSYBOX ?= /bin/busybox
IMAGE   := build/rpi-busybox-httpd.tar
N       ?= 100
PIRUN   := bin/pirun --root $(ROOT) --state $(STATE)

.PHONY: all build image demo test lint deps clean clean-test soak scale bench bench-pull cross cross-check bench-deps
all: build

## deps: install what a fresh Debian machine lacks (apt packages, Go modules)
deps:
	@missing=""; \
	for p in busybox-static iptables curl gcc pkg-config libseccomp-dev; do \
		dpkg -s $$p >/dev/null 2>&1 || dpkg -s $$p:$$(dpkg --print-architecture) >/dev/null 2>&1 \
			|| missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" != 0 ]; then \
		echo "missing:$$missing (run as root, or install them, to run containers)"; \
	elif [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq || true; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
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

## soak: CYCLES (1000) spawn/rm cycles of N (10) containers, then counts what is left (must be nothing)
soak: build
	CYCLES=$(or $(CYCLES),1000) N=$(if $(filter file,$(origin N)),10,$(N)) ./scripts/soak.sh

## scale: N (10000) web servers, each with its own namespaces and address, all answering GET /;
## start rate, memory and slab per container, removal, then counts what is left (must be nothing)
scale: deps image
	N=$(if $(filter file,$(origin N)),10000,$(N)) ./scripts/scale.sh

## cross: static binaries for linux/amd64, linux/arm (GOARM=7, Raspberry Pi 2/3) and linux/arm64
## into bin/; installs Debian's cross compilers when missing. Budget: 25 MiB each.
CROSS := amd64:x86_64-linux-gnu:amd64 arm:arm-linux-gnueabihf:armhf arm64:aarch64-linux-gnu:arm64
cross:
	@for t in $(CROSS); do \
		arch=$${t%%:*}; rest=$${t#*:}; tri=$${rest%%:*}; debarch=$${rest#*:}; \
		cc=$$tri-gcc; pkgs="gcc-$$(echo $$tri | tr _ -)"; \
		[ "$$debarch" = "$$(dpkg --print-architecture)" ] && cc=gcc && pkgs=gcc; \
		[ -e /usr/lib/$$tri/libseccomp.a ] || pkgs="$$pkgs libseccomp-dev:$$debarch"; \
		command -v $$cc >/dev/null && [ -e /usr/lib/$$tri/libseccomp.a ] || { \
			dpkg --add-architecture $$debarch; apt-get update -qq || true; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; } || exit 1; \
		echo "building bin/pirun-linux-$$arch"; \
		CGO_ENABLED=1 GOOS=linux GOARCH=$$arch GOARM=7 CC=$$cc CGO_CFLAGS=-Os \
			PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR=/usr/lib/$$tri/pkgconfig:/usr/share/pkgconfig \
			$(GO) build -tags $(TAGS),netgo,osusergo -trimpath \
			-ldflags "$(LDFLAGS) -s -w -extldflags -static" -o bin/pirun-linux-$$arch ./cmd/pirun 2>&1 \
			| grep -v -e 'statically linked applications requires at runtime' -e 'in function .unixDlOpen' -e '^# ' ; \
		test -x bin/pirun-linux-$$arch || exit 1; \
		size=$$(stat -c %s bin/pirun-linux-$$arch); \
		echo "  $$(file -b bin/pirun-linux-$$arch | grep -o 'ELF [^,]*, [^,]*\|statically linked' | paste -sd' ') — $$size bytes ($$(awk "BEGIN{printf \"%.1f\", $$size/1048576}") MiB)"; \
		[ $$size -le 26214400 ] || echo "  OVER the 25 MiB budget by $$((size - 26214400)) bytes"; \
	done

## cross-check: run the arm and arm64 binaries' version and --help under qemu-user
cross-check: cross
	@command -v qemu-arm-static >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null; }
	qemu-arm-static bin/pirun-linux-arm version
	qemu-aarch64-static bin/pirun-linux-arm64 version
	qemu-arm-static bin/pirun-linux-arm --help >/dev/null
	qemu-aarch64-static bin/pirun-linux-arm64 --help >/dev/null

clean:
	rm -rf bin build

## bench-deps: install Docker, podman and crun from Debian, for make bench
bench-deps: deps
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io podman crun uidmap skopeo iptables >/dev/null

## bench-pull: pulls of a 12 MB, 3-layer image from a local registry, alternating
## pirun (API and binary) with skopeo copy (ROUNDS=31 of each); medians and ratios
ROUNDS ?= 31
bench-pull: deps build
	PIRUN_BIN=$(CURDIR)/bin/pirun $(GO) test -tags $(TAGS) -run '^$$' -bench PullVsSkopeo -benchtime $(ROUNDS)x ./image/

## bench: pirun, Docker, tuned Docker and podman, N=100 and 1000 replicas each, in turns
## (N=..., REPEAT=3, RUNTIMES=..., BENCH_TIMEOUT=per-run start budget); writes bench/results/
bench: deps build
	@mkdir -p build
	$(GO) run -tags $(TAGS) ./internal/mkimage -busybox $(BUSYBOX) -o $(IMAGE) -name rpi-busybox-httpd:latest
	$(GO) build -tags $(TAGS) -trimpath -o bin/density ./bench/cmd/density
	N="$(if $(filter file,$(origin N)),100 1000,$(N))" bin/density -archive $(IMAGE) -out bench/results

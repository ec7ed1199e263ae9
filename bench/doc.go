// Package bench measures pirun at density: how fast N containers start
// until every one answers HTTP, how much host memory each one costs, and
// how fast they go away.
//
// Two tools live here:
//
//   - The Go benchmarks of this package (BenchmarkSpawn, BenchmarkRunTrue)
//     measure pirun alone through its public API:
//     go test -tags containers_image_openpgp,runc_nocriu -run '^$' -bench . ./bench/
//     They run as root in the host's network namespace, on a state
//     directory and a bridge of their own (pirun-bench, 10.126.0.0/16).
//
//   - The density comparison, bench/cmd/density (library code in
//     bench/internal/density), driven by `make bench`: the same job with
//     pirun, Docker (docker.io), the Hypriot winners' tuned Docker
//     (--userland-proxy=false, --log-driver=none, --read-only) and podman
//     (crun; runc where crun cannot run, and the report says so), N
//     replicas of the same busybox-httpd image each, imported into Docker
//     and podman from the same archive. Runs alternate between runtimes and
//     repeat (REPEAT, default 3); the report gives medians, ranges and
//     ratios to pirun. It writes bench/results/density-TIME.json,
//     bench/results/latest.json, bench/results/README.md (the table) and
//     bench/results/density.png (the chart). `make bench-deps` installs
//     Docker and podman; a runtime that is missing is reported as skipped.
//
//     make bench-deps
//     make bench                              # N=100 and N=1000
//     N=100 REPEAT=5 RUNTIMES=pirun,podman make bench
//     BENCH_TIMEOUT=20m N=1000 make bench     # start budget per run
//     bin/density -report -out bench/results bench/results/density-*.json
//
// Per run, the comparison measures: seconds from the first start until the
// last container answers, and the rate; MemAvailable before and after
// (page cache dropped both times) per container, with the change of slab,
// kernel stacks and page tables and the PSS of every helper process
// (daemons, shims, conmon, proxies); helper processes per container;
// answers out of N; teardown time; and what is left after the teardown
// (containers, processes, veths, mounts, helpers). Starts that do not fit
// the time budget (BENCH_TIMEOUT; default max(3m, N×0.9s)) are reported as
// not started.
//
// Docker and podman are driven through their CLIs, with 4 parallel
// starters; pirun through its Go API in a child process (the harness
// re-executed), so that, as with the pirun CLI, nothing of pirun stays
// resident. Each runtime has a bridge of its own: pirun 10.127.0.0/16,
// Docker 10.124.0.0/16, podman 10.125.0.0/16 (pirun's default is
// 10.123.0.0/16, podman's 10.88.0.0/16). The harness starts a dockerd of
// its own for every Docker run (own socket, data and exec root under
// /var/lib/pirun-bench and /run/pirun-bench; --iptables=false
// --ip-forward=false --bridge=none: no ports are published) and stops it
// after; podman gets its own storage and network configuration. At the end
// it removes its directories, restores net.ipv4.ip_forward and removes the
// iptables chains podman's netavark made, and reports those changes.
//
// Requests go only to the containers' addresses on those bridges, each
// bounded in time and count.
package bench

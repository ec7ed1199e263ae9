// Package bench measures pirun at density: how fast N containers start
// until every one answers HTTP, how much host memory each one costs, and
// how fast they go away. It uses only pirun's public API.
//
//	make bench            # N=100
//	N=1000 make bench
//
// The benchmarks run as root in the host's network namespace (the
// neighbour table they fill is the host's), on a state directory and a
// bridge of their own (pirun-bench, 10.126.0.0/16), and remove everything
// they started. They send requests only to the addresses of the containers
// they started, each bounded in time.
package bench

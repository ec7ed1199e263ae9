// Command density is the density benchmark: it starts N replicas of the
// busybox-httpd image with pirun, Docker, the Hypriot winners' tuned
// Docker and podman (crun), in turns, and writes what each costs to
// bench/results: JSON, a Markdown table and a chart. `make bench` runs it;
// see bench/doc.go.
//
//	density -archive build/rpi-busybox-httpd.tar -out bench/results
//	density -report bench/results/density-*.json   # table and chart only
//
// Environment: N (counts, "100,1000"), REPEAT (3), RUNTIMES (all),
// BENCH_TIMEOUT (start budget per run; default max(3m, N×0.9s)).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pirun/pirun/bench/internal/density"
	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/runtime"
)

func main() {
	if runtime.IsInit() { // a pirun container's init, re-executed
		runtime.Init()
	}
	if len(os.Args) > 1 && os.Args[1] == density.ChildCommand {
		if err := density.RunChild(os.Args[2:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "density:", err)
		os.Exit(1)
	}
}

func run() error {
	archive := flag.String("archive", "build/rpi-busybox-httpd.tar", "the image as an OCI archive (make image)")
	out := flag.String("out", "bench/results", "directory for the results")
	report := flag.Bool("report", false, "only write the table and chart from the JSON files given as arguments")
	keep := flag.Bool("keep", false, "keep the work directories (images of docker and podman)")
	flag.Parse()

	if *report {
		res, err := density.ReadResults(flag.Args()...)
		if err != nil {
			return err
		}
		return writeReport(*out, res)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (namespaces, bridges, dockerd, drop_caches)")
	}
	counts, err := ints(envOr("N", "100,1000"))
	if err != nil {
		return fmt.Errorf("N: %w", err)
	}
	repeat, err := strconv.Atoi(envOr("REPEAT", "3"))
	if err != nil || repeat < 1 {
		return fmt.Errorf("REPEAT=%q: want a positive number", os.Getenv("REPEAT"))
	}
	budget := func(n int) time.Duration {
		return max(3*time.Minute, time.Duration(n)*900*time.Millisecond)
	}
	if v := os.Getenv("BENCH_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("BENCH_TIMEOUT: %w", err)
		}
		budget = func(int) time.Duration { return d }
	}
	if _, err := os.Stat(*archive); err != nil {
		return fmt.Errorf("image archive: %w (make image writes it)", err)
	}
	abs, err := filepath.Abs(*archive)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stamp := time.Now().UTC().Format("20060102-150405")
	jsonPath := filepath.Join(*out, "density-"+stamp+".json")
	cfg := density.Config{
		Archive:  abs,
		Image:    imagebuild.DefaultName,
		Counts:   counts,
		Repeat:   repeat,
		Runtimes: strings.FieldsFunc(envOr("RUNTIMES", strings.Join(density.AllRuntimes(), ",")), isSep),
		Budget:   budget,
		Work:     "/var/lib/pirun-bench",
		Run:      "/run/pirun-bench",
		Keep:     *keep,
		Log:      os.Stderr,
		Checkpoint: func(r *density.Results) {
			_ = writeJSON(jsonPath, r)
		},
	}
	res, berr := density.Bench(ctx, cfg)
	if res == nil {
		return berr
	}
	if err := writeJSON(jsonPath, res); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "wrote", jsonPath)
	if err := writeReport(*out, res); err != nil {
		return err
	}
	return berr
}

func writeReport(dir string, res *density.Results) error {
	chart := "density.png"
	if err := density.WriteChart(filepath.Join(dir, chart), res.Runs); err != nil {
		fmt.Fprintln(os.Stderr, "density:", err)
		chart = ""
	}
	var md bytes.Buffer
	density.WriteMarkdown(&md, res, chart)
	if err := os.WriteFile(filepath.Join(dir, "README.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, "latest.json"), res); err != nil {
		return err
	}
	os.Stdout.Write(md.Bytes())
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func isSep(r rune) bool { return r == ',' || r == ' ' }

func ints(s string) ([]int, error) {
	var ns []int
	for _, f := range strings.FieldsFunc(s, isSep) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive numbers", f)
		}
		ns = append(ns, n)
	}
	if len(ns) == 0 {
		return nil, fmt.Errorf("no counts")
	}
	return ns, nil
}

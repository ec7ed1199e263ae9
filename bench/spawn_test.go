package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pirun/pirun/image"
	"github.com/pirun/pirun/internal/imagebuild"
	"github.com/pirun/pirun/internal/testutil"
	"github.com/pirun/pirun/network"
	"github.com/pirun/pirun/runtime"
)

func TestMain(m *testing.M) {
	if runtime.IsInit() {
		runtime.Init()
	}
	os.Exit(m.Run())
}

func count() int {
	if n, err := strconv.Atoi(os.Getenv("N")); err == nil && n > 0 {
		return n
	}
	return 100
}

func setup(b *testing.B) *runtime.Runtime {
	b.Helper()
	testutil.RequiresRoot(b)
	archive := testutil.DefaultImageArchive(b)
	store, err := image.Open(filepath.Join(b.TempDir(), "root"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := store.Import(context.Background(), "oci-archive:"+archive); err != nil {
		b.Fatal(err)
	}
	// State on a tmpfs, as /run/pirun is.
	state, err := os.MkdirTemp("/run", "pirun-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(state) })
	rt, err := runtime.New(state, store, runtime.WithNetworkOptions(
		network.WithBridgeName("pirun-bench"), network.WithSubnet(netip.MustParsePrefix("10.126.0.0/16"))))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { removeAll(b, rt) })
	return rt
}

func removeAll(b *testing.B, rt *runtime.Runtime) time.Duration {
	ctx := context.Background()
	cs, err := rt.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	start := time.Now()
	if len(ids) > 0 {
		if err := rt.Remove(ctx, ids, true); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// memAvailable drops the page cache and returns MemAvailable in kB.
func memAvailable(b *testing.B) int {
	b.Helper()
	exec := func(p, v string) { _ = os.WriteFile(p, []byte(v), 0) }
	exec("/proc/sys/vm/drop_caches", "3")
	time.Sleep(200 * time.Millisecond)
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	b.Fatal("no MemAvailable in /proc/meminfo")
	return 0
}

// answerAll fetches / from every container until each has answered once,
// each request bounded, the whole bounded by deadline.
func answerAll(cs []*runtime.Container, deadline time.Time) (int, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	var answered atomic.Int64
	var wg sync.WaitGroup
	work := make(chan string)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ip := range work {
				for time.Now().Before(deadline) {
					resp, err := client.Get("http://" + ip + "/")
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == http.StatusOK {
							answered.Add(1)
							break
						}
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	for _, c := range cs {
		work <- c.IP
	}
	close(work)
	wg.Wait()
	if n := int(answered.Load()); n != len(cs) {
		return n, fmt.Errorf("%d of %d containers answered", n, len(cs))
	}
	return len(cs), nil
}

// BenchmarkSpawn starts N busybox-httpd containers, waits until every one
// answers HTTP, measures the host memory they use, and removes them.
func BenchmarkSpawn(b *testing.B) {
	rt := setup(b)
	n := count()
	ctx := context.Background()
	var startS, memKB, rmS float64
	iters := 0
	for b.Loop() {
		before := memAvailable(b)
		start := time.Now()
		cs, err := rt.Spawn(ctx, runtime.Config{Image: imagebuild.DefaultName, Name: "bench"}, n, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := answerAll(cs, time.Now().Add(2*time.Minute)); err != nil {
			b.Fatal(err)
		}
		startS += time.Since(start).Seconds()
		memKB += float64(before-memAvailable(b)) / float64(n)
		rmS += removeAll(b, rt).Seconds()
		iters++
	}
	b.ReportMetric(float64(n)*float64(iters)/startS, "containers/s")
	b.ReportMetric(startS/float64(iters), "s-to-all-answering")
	b.ReportMetric(memKB/float64(iters), "kB/container")
	b.ReportMetric(rmS/float64(iters), "s-teardown")
}

// BenchmarkRunTrue is one foreground `run --rm IMAGE true`.
func BenchmarkRunTrue(b *testing.B) {
	rt := setup(b)
	ctx := context.Background()
	for b.Loop() {
		c, code, err := rt.Run(ctx, runtime.Config{Image: imagebuild.DefaultName, Cmd: []string{"true"}, Network: runtime.NetworkNone}, runtime.Stdio{})
		if err != nil || code != 0 {
			b.Fatalf("run true: %d %v", code, err)
		}
		if err := rt.Remove(ctx, []string{c.ID}, true); err != nil {
			b.Fatal(err)
		}
	}
}

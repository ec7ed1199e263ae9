// Package registrytest starts a real registry for tests: Debian's
// docker-registry (distribution 2.8), bound to 127.0.0.1 on a free port,
// storing into a directory of the test, stopped on cleanup. Its packaged
// configuration (every interface) and service are never used.
package registrytest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containers/image/v5/copy"
	"github.com/containers/image/v5/docker"
	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
	digest "github.com/opencontainers/go-digest"
)

// Binary is Debian's registry (apt package docker-registry).
const Binary = "/usr/bin/docker-registry"

// Registry is a running registry.
type Registry struct {
	// Addr is 127.0.0.1:PORT.
	Addr string
	// Dir is the registry's storage root (the filesystem driver's
	// rootdirectory), for tests that tamper with stored blobs.
	Dir string

	cmd *exec.Cmd
	log *syncBuffer
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Config is written as the registry's configuration; %s are the storage
// directory and the address. No notifications, no proxy, no redis: the
// registry talks to nobody.
const config = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
health:
  storagedriver:
    enabled: false
`

// Start starts a registry for t, skipping t if docker-registry is not
// installed. It is killed when t ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("skipping: %s is missing (apt-get install docker-registry)", Binary)
	}
	dir := t.TempDir()
	var lastErr error
	for range 3 { // a free port may be taken between Close and the registry's bind
		r, err := start(t, dir)
		if err == nil {
			return r
		}
		lastErr = err
	}
	t.Fatalf("start registry: %v", lastErr)
	return nil
}

func start(t testing.TB, dir string) (*Registry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	r := &Registry{Addr: addr, Dir: filepath.Join(dir, "data"), log: &syncBuffer{}}
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, r.Dir, addr), 0o600); err != nil {
		return nil, err
	}
	r.cmd = exec.Command(Binary, "serve", cfg)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	r.cmd.Env = []string{"PATH=/usr/bin:/bin"} // no REGISTRY_* from the environment
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		<-exited
	})
	// Wait until it answers: at most 100 tries over 10 s.
	client := &http.Client{Timeout: time.Second}
	for range 100 {
		select {
		case <-exited:
			return nil, fmt.Errorf("docker-registry exited: %s", r.log.String())
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = r.cmd.Process.Kill()
	return nil, fmt.Errorf("docker-registry on %s did not answer within 10 s: %s", addr, r.log.String())
}

// Stop kills the registry now (a registry that goes away).
func (r *Registry) Stop() { _ = r.cmd.Process.Kill() }

// Log returns the registry's output so far, access log included.
func (r *Registry) Log() string { return r.log.String() }

var blobGet = regexp.MustCompile(`"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" 200 `)

// BlobGets returns the digests of the blobs served (GET, status 200) so
// far, from the access log, in order.
func (r *Registry) BlobGets() []string {
	var out []string
	for _, m := range blobGet.FindAllStringSubmatch(r.Log(), -1) {
		out = append(out, m[1])
	}
	return out
}

// SystemContext is what containers/image needs for this plain-HTTP
// registry.
func SystemContext() *types.SystemContext {
	return &types.SystemContext{
		DockerInsecureSkipTLSVerify: types.OptionalBoolTrue,
		SystemRegistriesConfPath:    os.DevNull,
		SystemRegistriesConfDirPath: os.DevNull + ".d",
	}
}

// Push copies src (e.g. an oci: layout) to the registry as name (e.g.
// "x/y:latest"), every instance of an index included, and returns the
// digest of the manifest pushed.
func (r *Registry) Push(t testing.TB, src types.ImageReference, name string) digest.Digest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	named, err := reference.ParseNormalizedNamed(r.Addr + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := docker.NewReference(reference.TagNameOnly(named))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Destroy()
	mf, err := copy.Image(ctx, pc, dst, src, &copy.Options{
		SourceCtx: SystemContext(), DestinationCtx: SystemContext(),
		ImageListSelection: copy.CopyAllImages,
	})
	if err != nil {
		t.Fatalf("push %s: %v", name, err)
	}
	return digest.FromBytes(mf)
}

// BlobPath is where the registry stores blob d.
func (r *Registry) BlobPath(d digest.Digest) string {
	enc := d.Encoded()
	return filepath.Join(r.Dir, "docker/registry/v2/blobs", d.Algorithm().String(), enc[:2], enc, "data")
}

// Ref returns the full reference of name in this registry.
func (r *Registry) Ref(name string) string {
	return r.Addr + "/" + strings.TrimPrefix(name, "/")
}

// Proxy serves r through wrap on another 127.0.0.1 port, for tests that
// break the registry's answers (cut a blob, change a media type). It
// returns the proxy's address and a func that closes it at once (a
// registry that goes away); it is closed when t ends too.
func (r *Registry) Proxy(t testing.TB, wrap func(next http.Handler) http.Handler) (addr string, stop func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := &url.URL{Scheme: "http", Host: r.Addr}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := &http.Server{Handler: wrap(rp), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = l.Close()
			_ = srv.Close()
		})
	}
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

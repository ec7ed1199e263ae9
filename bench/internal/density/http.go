package density

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// poller fetches http://IP/ from each address it is given until it answers
// 200 once. Every request is bounded (requestTimeout), every address is
// tried at most maxAttempts times, and all of it stops at the context's
// deadline. It only ever connects to addresses inside subnet: the bridge
// the harness made on this machine.
type poller struct {
	subnet netip.Prefix
	client *http.Client
	t0     time.Time
	work   chan string

	mu       sync.Mutex
	answered map[string]time.Duration
	refused  int
	wg       sync.WaitGroup
}

const (
	requestTimeout = 2 * time.Second
	retryPause     = 50 * time.Millisecond
	maxAttempts    = 3000
	pollWorkers    = 16
)

func newPoller(ctx context.Context, subnet netip.Prefix, t0 time.Time, capacity int) *poller {
	p := &poller{
		subnet: subnet,
		t0:     t0,
		work:   make(chan string, capacity),
		client: &http.Client{
			Timeout: requestTimeout,
			Transport: &http.Transport{
				Proxy:             nil, // never through a proxy: straight to the bridge
				DialContext:       (&net.Dialer{Timeout: requestTimeout}).DialContext,
				DisableKeepAlives: true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		answered: make(map[string]time.Duration, capacity),
	}
	for range pollWorkers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for ip := range p.work {
				p.poll(ctx, ip)
			}
		}()
	}
	return p
}

// add queues an address; it never blocks beyond the poller's capacity.
func (p *poller) add(ip string) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !p.subnet.Contains(a) {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		return
	}
	p.work <- a.String()
}

func (p *poller) poll(ctx context.Context, ip string) {
	url := fmt.Sprintf("http://%s/", ip)
	for range maxAttempts {
		if ctx.Err() != nil {
			return
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := p.client.Do(req)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.mu.Lock()
				p.answered[ip] = time.Since(p.t0)
				p.mu.Unlock()
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryPause):
		}
	}
}

// wait closes the queue and waits for every address to answer or give up.
// It returns how many answered and when the last one did.
func (p *poller) wait() (n int, last time.Duration) {
	close(p.work)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.answered {
		last = max(last, d)
	}
	return len(p.answered), last
}

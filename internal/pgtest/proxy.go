package pgtest

import (
	"net"
	"net/url"
	"testing"

	"github.com/ehealth-nl/portal/internal/faults"
)

// Proxy is a faults.Proxy in front of the test database: Cut makes the
// database "go away" for the service under test.
type Proxy struct {
	*faults.Proxy
	t testing.TB
}

// NewProxy starts a proxy in front of the database of databaseURL; it is
// closed when the test ends.
func NewProxy(t testing.TB, databaseURL string) *Proxy {
	t.Helper()
	u, err := url.Parse(databaseURL)
	if err != nil || u.Host == "" {
		t.Fatalf("proxy needs a URL-form DATABASE_URL with a host, got %q", redact(databaseURL))
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	p, err := faults.NewProxy(net.JoinHostPort(host, port))
	if err != nil {
		t.Fatalf("start database proxy: %v", err)
	}
	t.Cleanup(p.Close)
	return &Proxy{Proxy: p, t: t}
}

// URL rewrites databaseURL to go through the proxy.
func (p *Proxy) URL(databaseURL string) string {
	return throughProxy(databaseURL, p.Addr())
}

// Restore lets connections through again; it fails the test if it cannot.
func (p *Proxy) Restore() {
	p.t.Helper()
	if err := p.Proxy.Restore(); err != nil {
		p.t.Fatalf("proxy listen again on %s: %v", p.Addr(), err)
	}
}

// throughProxy rewrites a database URL to connect to addr instead.
func throughProxy(databaseURL, addr string) string {
	u, _ := url.Parse(databaseURL)
	u.Host = addr
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return u.String()
}

package faults

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
)

// HTTPProxy forwards HTTP requests from a loopback port to a target
// origin, and can spoil writes on their way: change the JSON body of each
// PUT (so that a real server refuses it with its own answer), refuse PUTs
// itself, or lose the answer to a PUT after the server has handled it (the
// client never hears that its write was stored).
type HTTPProxy struct {
	target string
	srv    *http.Server
	addr   string

	mu      sync.Mutex
	corrupt func(body map[string]any)
	refuse  int
	lose    int
	lost    []string
}

// NewHTTPProxy listens on a free loopback port and forwards to target
// (an origin, "http://host:port").
func NewHTTPProxy(target string) (*HTTPProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &HTTPProxy{target: strings.TrimSuffix(target, "/"), addr: ln.Addr().String()}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve)}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// URL is the proxy's origin, http://127.0.0.1:port.
func (p *HTTPProxy) URL() string { return "http://" + p.addr }

// Close stops the proxy.
func (p *HTTPProxy) Close() { _ = p.srv.Close() }

// CorruptPuts applies change to the JSON object of every PUT body from now
// on; nil stops it. A body that is not a JSON object passes unchanged.
func (p *HTTPProxy) CorruptPuts(change func(body map[string]any)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.corrupt = change
}

// RefusePuts answers every PUT from now on with status, without
// forwarding it (a server that is away behind a gateway); 0 stops it.
func (p *HTTPProxy) RefusePuts(status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = status
}

// LoseAnswers makes the proxy forward the next n PUTs and then close the
// client's connection instead of answering.
func (p *HTTPProxy) LoseAnswers(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lose = n
}

// Lost lists the paths of the PUTs whose answer was lost.
func (p *HTTPProxy) Lost() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lost...)
}

func (p *HTTPProxy) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	put := r.Method == http.MethodPut
	p.mu.Lock()
	corrupt, refuse, lose := p.corrupt, p.refuse, put && p.lose > 0 && p.refuse == 0
	if put && refuse != 0 {
		p.mu.Unlock()
		http.Error(w, "refused by the fault proxy", refuse)
		return
	}
	if lose {
		p.lose--
		p.lost = append(p.lost, r.URL.Path)
	}
	p.mu.Unlock()
	if put && corrupt != nil {
		var object map[string]any
		if json.Unmarshal(body, &object) == nil {
			corrupt(object)
			body, _ = json.Marshal(object)
		}
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if lose {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
		}
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

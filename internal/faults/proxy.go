// Package faults makes failures happen on purpose, for tests and the soak:
// a TCP proxy that can cut a service off from its database or its domain
// (connections reset) or black-hole it (bytes stop flowing, connections
// stay open, as behind a partition that drops packets), and let it through
// again, while the real server keeps running for everyone else; and an
// HTTP proxy that spoils writes (a changed body, a lost answer).
package faults

import (
	"net"
	"sync"
)

// Proxy forwards TCP connections from a loopback port to a target address.
type Proxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	cuts  int
	// hole is non-nil while the proxy black-holes: forwarding waits until
	// it is closed.
	hole chan struct{}
}

// NewProxy listens on a free loopback port and forwards to target
// ("host:port").
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	p.serve(ln)
	return p, nil
}

// Addr is the proxy's loopback address.
func (p *Proxy) Addr() string { return p.addr }

// Cut closes every proxied connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
		p.cuts++
	}
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = map[net.Conn]bool{}
	p.endHole()
}

// BlackHole stops forwarding bytes in both directions without closing any
// connection; new connections are accepted and then hang too. Nothing is
// lost: what was sent meanwhile is delivered after Restore, as TCP would
// once a partition heals.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hole == nil {
		p.hole = make(chan struct{})
	}
}

// endHole lets held bytes through again; the caller holds mu.
func (p *Proxy) endHole() {
	if p.hole != nil {
		close(p.hole)
		p.hole = nil
	}
}

// Restore ends a black hole, and after Cut accepts connections again on the
// same address.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	p.endHole()
	cut := p.ln == nil
	p.mu.Unlock()
	if !cut {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return err
	}
	p.serve(ln)
	return nil
}

// Close cuts the proxy for good.
func (p *Proxy) Close() { p.Cut() }

// waitOpen blocks while the proxy black-holes.
func (p *Proxy) waitOpen() {
	p.mu.Lock()
	hole := p.hole
	p.mu.Unlock()
	if hole != nil {
		<-hole
	}
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(client)
		}
	}()
}

func (p *Proxy) forward(client net.Conn) {
	p.mu.Lock()
	p.conns[client] = true
	p.mu.Unlock()
	p.waitOpen() // a connection accepted inside a black hole hangs
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil || !p.conns[client] { // cut while dialling
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.conns[server] = true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32*1024)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p.waitOpen()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	_ = client.Close()
	_ = server.Close()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

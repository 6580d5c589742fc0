package fhirdomain

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// cache keeps the bodies of recent reads of ActivityDefinitions, Endpoints
// and Devices (and canonical searches), by issuer and request, so a burst
// of launches for one module does not read them again. A Task is never
// kept: its status and owner are what a launch checks now.
type cache struct {
	mu      sync.Mutex
	max     int
	entries map[string]entry
	flight  flight
}

type entry struct {
	body    []byte
	etag    string
	expires time.Time
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[string]entry)}
}

func (k *cache) lookup(key string) (entry, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.entries[key]
	return e, ok
}

// store keeps e; when full it drops the expired entries first, then any.
func (k *cache) store(key string, e entry, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.entries[key]; !ok && len(k.entries) >= k.max {
		for key, old := range k.entries {
			if !now.Before(old.expires) {
				delete(k.entries, key)
			}
		}
		for key := range k.entries {
			if len(k.entries) < k.max {
				break
			}
			delete(k.entries, key)
		}
	}
	k.entries[key] = e
}

func (k *cache) drop(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.entries, key)
}

// cachedGet is get through the cache: a fresh entry answers at once; an
// expired one with an ETag is revalidated with If-None-Match (a 304, or a
// 200 with the same ETag, keeps its body for another TTL); concurrent
// misses for one key share one request. Only 200s are kept. The shared
// request runs on ctx's values without its cancellation, so one caller
// giving up does not fail the others.
func (c *Client) cachedGet(ctx context.Context, issuer, resourceType, rel string) (response, error) {
	if c.cfg.CacheTTL < 0 {
		return c.get(ctx, issuer, rel, "")
	}
	key := issuer + "\x00" + rel
	if e, ok := c.cache.lookup(key); ok && c.cfg.Now().Before(e.expires) {
		c.observe(resourceType, CacheHit)
		return response{status: http.StatusOK, etag: e.etag, body: e.body}, nil
	}
	shared := context.WithoutCancel(ctx)
	res, outcome, waited, err := c.cache.flight.do(ctx, key, func() (response, CacheOutcome, error) {
		old, had := c.cache.lookup(key)
		if had && c.cfg.Now().Before(old.expires) {
			// Another flight for this key stored it between this caller's
			// lookup and its joining: no request.
			return response{status: http.StatusOK, etag: old.etag, body: old.body}, CacheHit, nil
		}
		etag := ""
		if had {
			etag = old.etag
		}
		res, err := c.get(shared, issuer, rel, etag)
		if err != nil {
			return response{}, CacheMiss, err
		}
		expires := c.cfg.Now().Add(c.cfg.CacheTTL)
		switch {
		case res.status == http.StatusNotModified:
			c.cache.store(key, entry{body: old.body, etag: old.etag, expires: expires}, c.cfg.Now())
			return response{status: http.StatusOK, etag: old.etag, body: old.body}, CacheRevalidated, nil
		case res.status == http.StatusOK && etag != "" && res.etag == etag:
			// A server that ignores If-None-Match (the test domain does)
			// sends the body again; the same ETag still says nothing
			// changed.
			c.cache.store(key, entry{body: res.body, etag: res.etag, expires: expires}, c.cfg.Now())
			return res, CacheRevalidated, nil
		case res.status == http.StatusOK:
			c.cache.store(key, entry{body: res.body, etag: res.etag, expires: expires}, c.cfg.Now())
		default:
			c.cache.drop(key)
		}
		return res, CacheMiss, nil
	})
	if err != nil {
		return response{}, err
	}
	if waited {
		outcome = CacheHit
	}
	c.observe(resourceType, outcome)
	return res, nil
}

func (c *Client) observe(resourceType string, outcome CacheOutcome) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(resourceType, outcome)
	}
}

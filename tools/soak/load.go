package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/ehealth-nl/portal/tools/internal/instance"
)

// startLoad starts the launch clients, the domain launch clients and the
// JWKS poller; they stop when ctx ends, and the returned group is done when
// they all have.
func (s *soak) startLoad(ctx context.Context, clients, domainClients int) *sync.WaitGroup {
	var load sync.WaitGroup
	for i := 0; i < clients; i++ {
		load.Add(1)
		go func() { defer load.Done(); s.launchLoop(ctx, i) }()
	}
	for i := 0; i < domainClients; i++ {
		load.Add(1)
		go func() { defer load.Done(); s.domainLoop(ctx, i) }()
	}
	load.Add(1)
	go func() { defer load.Done(); s.watchJWKS(ctx) }()
	return &load
}

var launchField = regexp.MustCompile(`name="launch" value="([^"]+)"`)

// followPending follows, once the database outage is over, the oldest
// link whose redemption met it, through redeemer; a link that fails again
// waits for the next turn. It reports whether it followed one.
func (s *soak) followPending(pending *[]string, redeemer *instance.Process, kind string) bool {
	if len(*pending) == 0 || s.inOutage(time.Now()) {
		return false
	}
	link := (*pending)[0]
	*pending = (*pending)[1:]
	s.retriedAfterOutage.Add(1)
	if !s.redeem(link, redeemer, true, kind) {
		*pending = append(*pending, link)
	}
	return true
}

// launchLoop creates launches through one instance and redeems them
// through the next, as a load balancer would spread them. Every tenth link
// is followed from two instances at once: exactly one may get the token.
// Links whose redemption met the outage are followed again after it.
func (s *soak) launchLoop(ctx context.Context, worker int) {
	var pending []string
	for n := worker; ctx.Err() == nil; n++ {
		creator := s.instances[n%3]
		redeemer := s.instances[(n+1)%3]
		if s.followPending(&pending, redeemer, kindHTI) {
			continue
		}
		if n%5 == 0 {
			s.directToken(creator)
			continue
		}
		status, body, err := s.post(creator.URL+"/api/v1/launches", s.launchKey, `{"module":"soak","task":"Task/soak","user":"Practitioner/dr","patient":"Patient/p"}`)
		if err != nil || status != http.StatusCreated {
			s.refusal("create launch", creator.Name, status, body, err)
			continue
		}
		s.countAfterOutage()
		var created struct {
			LaunchURL string `json:"launch_url"`
		}
		if err := json.Unmarshal(body, &created); err != nil {
			s.fail("create launch answer: %v", err)
			continue
		}
		link := strings.Replace(created.LaunchURL, creator.URL, redeemer.URL, 1)
		if n%10 == 1 {
			s.race(link, redeemer, s.instances[(n+2)%3], kindHTI)
			continue
		}
		if !s.redeem(link, redeemer, false, kindHTI) {
			pending = append(pending, link)
		}
	}
	s.followLeftOver(pending, s.instances[worker%3], kindHTI)
}

// followLeftOver follows, once the load has stopped, the links whose
// redemption met the outage: they must still work.
func (s *soak) followLeftOver(pending []string, p *instance.Process, kind string) {
	for _, link := range pending {
		s.retriedAfterOutage.Add(1)
		if !s.redeem(link, p, true, kind) {
			s.fail("a link whose redemption met the outage could not be followed after it")
		}
	}
}

// domainLoop launches Tasks of the test domain for the domain issuer
// through one instance after the other: tokens, links redeemed through the
// next instance (every fourth followed from two instances at once), and
// launches the domain refuses (403 for a practitioner outside the
// CareTeam, 422 for a Task whose module has no Endpoint). Links whose
// redemption met the database outage are followed again after it.
func (s *soak) domainLoop(ctx context.Context, worker int) {
	var pending []string
	for n := worker; ctx.Err() == nil; n++ {
		creator := s.instances[n%3]
		redeemer := s.instances[(n+1)%3]
		if s.followPending(&pending, redeemer, kindKT) {
			continue
		}
		switch n % 6 {
		case 0, 3:
			requested := time.Now()
			status, body, err := s.post(creator.URL+"/api/v1/launch-tokens", s.launchKey, domainToken)
			if err != nil || status != http.StatusCreated {
				s.domainRefusal("domain launch token", creator.Name, status, body, err)
				continue
			}
			s.domainCreated()
			var issued struct{ Token string }
			if err := json.Unmarshal(body, &issued); err != nil {
				s.fail("domain launch token answer: %v", err)
				continue
			}
			s.submit(issued.Token, requested, creator.Name, kindKT)
		case 1, 4:
			status, body, err := s.post(creator.URL+"/api/v1/launches", s.launchKey, domainLink)
			var created struct {
				LaunchURL string `json:"launch_url"`
			}
			if err != nil || status != http.StatusCreated {
				s.domainRefusal("create domain launch", creator.Name, status, body, err)
				continue
			}
			s.domainCreated()
			if err := json.Unmarshal(body, &created); err != nil {
				s.fail("create domain launch answer: %v", err)
				continue
			}
			link := strings.Replace(created.LaunchURL, creator.URL, redeemer.URL, 1)
			if n%12 == 1 {
				s.race(link, redeemer, s.instances[(n+2)%3], kindKT)
				continue
			}
			if !s.redeem(link, redeemer, false, kindKT) {
				pending = append(pending, link)
			}
		case 2:
			s.domainRefused(creator, "/api/v1/launches", domainForbidden, http.StatusForbidden, "launch-refused")
		case 5:
			s.domainRefused(creator, "/api/v1/launch-tokens", domainNoModule, http.StatusUnprocessableEntity, "task-not-launchable")
		}
	}
	s.followLeftOver(pending, s.instances[worker%3], kindKT)
}

// domainRefused asks for a launch the domain refuses: the answer must be
// the refusal, naming the launch record it wrote (whose AuditEvent the
// checks look for).
func (s *soak) domainRefused(p *instance.Process, path, body string, want int, kind string) {
	status, answer, err := s.post(p.URL+path, s.launchKey, body)
	var problem struct {
		Type     string `json:"type"`
		LaunchID string `json:"launch_id"`
	}
	if err != nil || status != want || json.Unmarshal(answer, &problem) != nil || problem.Type != "urn:portal:problem:"+kind || problem.LaunchID == "" {
		s.domainRefusal("refused domain launch", p.Name, status, answer, err)
		return
	}
	s.domainCreated()
	s.mu.Lock()
	s.refusedLaunches = append(s.refusedLaunches, problem.LaunchID)
	s.mu.Unlock()
	switch want {
	case http.StatusForbidden:
		s.domainForbidden.Add(1)
	default:
		s.domainNoModule.Add(1)
	}
}

// race follows one link from two instances at the same moment.
func (s *soak) race(link string, a, b *instance.Process, kind string) {
	s.racedLinks.Add(1)
	var wg sync.WaitGroup
	statuses := make([]int, 2)
	for i, p := range []*instance.Process{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = s.follow(strings.Replace(link, a.URL, p.URL, 1), p, kind)
		}()
	}
	wg.Wait()
	s.checkRace(statuses)
}

// follow gets a link once and accounts for the answer; it returns the
// status (0 for a transport error).
func (s *soak) follow(link string, p *instance.Process, kind string) int {
	requested := time.Now()
	resp, err := s.client.Post(link, "", nil) // the launch page posts to its link to redeem it
	if err != nil {
		s.otherErrors.Add(1)
		return 0
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		m := launchField.FindSubmatch(page)
		if m == nil {
			s.fail("launch page of %s without a token", p.Name)
			return resp.StatusCode
		}
		s.markRedeemed(link[strings.LastIndex(link, "/")+1:], p.Name)
		s.submit(string(m[1]), requested, p.Name, kind)
	case http.StatusServiceUnavailable:
		s.unavailable(p.Name, "redeem")
	}
	return resp.StatusCode
}

// redeem follows a launch link; it reports false when the link should be
// tried again (the database was away).
func (s *soak) redeem(link string, p *instance.Process, retry bool, kind string) bool {
	switch status := s.follow(link, p, kind); {
	case status == http.StatusOK:
		if retry {
			s.afterOutageOK.Add(1)
		}
		return true
	case status == http.StatusServiceUnavailable || status == 0:
		return false
	case status == http.StatusGone && retry:
		// The redemption committed but its answer was lost with the
		// connection, and the link could not be given back: it is used and
		// no token was sent. Not twice.
		s.lostInOutage.Add(1)
		return true
	default:
		s.fail("redeem on %s: status %d", p.Name, status)
		return true
	}
}

// directToken asks an instance for a token without a link
// (POST /api/v1/launch-tokens) and hands it to the verifier.
func (s *soak) directToken(p *instance.Process) {
	requested := time.Now()
	status, body, err := s.post(p.URL+"/api/v1/launch-tokens", s.launchKey, `{"module":"soak","task":"Task/soak","user":"Patient/p"}`)
	if err != nil || status != http.StatusCreated {
		s.refusal("launch token", p.Name, status, body, err)
		return
	}
	s.countAfterOutage()
	var issued struct{ Token string }
	if err := json.Unmarshal(body, &issued); err != nil {
		s.fail("launch token answer: %v", err)
		return
	}
	s.submit(issued.Token, requested, p.Name, kindHTI)
}

// post sends a JSON body with an API key and returns the status and body.
func (s *soak) post(u, key, body string) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// submit records a token of a kind (kindHTI, kindKT) and hands it to the
// independent verifier.
func (s *soak) submit(token string, requested time.Time, instanceName, kind string) {
	parts := strings.Split(token, ".")
	var hdr struct{ Kid string }
	var claims struct{ JTI string }
	if len(parts) == 3 {
		h, _ := base64.RawURLEncoding.DecodeString(parts[0])
		c, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(h, &hdr)
		_ = json.Unmarshal(c, &claims)
	}
	s.mu.Lock()
	if s.jtis[claims.JTI] {
		s.mu.Unlock()
		s.fail("jti %s issued twice", claims.JTI)
		return
	}
	s.jtis[claims.JTI] = true
	id := len(s.tokens)
	s.tokens = append(s.tokens, issuedToken{jti: claims.JTI, kid: hdr.Kid, kind: kind, requested: requested, submitted: time.Now(), instance: instanceName})
	s.mu.Unlock()
	s.issued.Add(1)
	if kind == kindKT {
		s.domainIssued.Add(1)
	}
	s.verifier.send(id, kind, token)
}

// watchJWKS asks every instance for its JWKS every 20 ms and has each
// answer checked (checkJWKS).
func (s *soak) watchJWKS(ctx context.Context) {
	c := &http.Client{Timeout: 2 * time.Second}
	for ctx.Err() == nil {
		for _, p := range s.instances {
			s.jwksRequests.Add(1)
			asked := time.Now()
			var status int
			var body []byte
			resp, err := c.Get(p.URL + "/.well-known/jwks.json")
			if err == nil {
				body, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			s.checkJWKS(p.Name, asked, status, body, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

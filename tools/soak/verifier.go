package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// runVerifier is the independent verifier: it reads "id kind token" lines
// on stdin and writes one JSON verdict per line. It does not use the
// portal's own verifier package. It caches the JWKS exactly as long as the
// Cache-Control max-age of the answer allows and never fetches it early,
// not even for an unknown kid: so a token signed with a key that was not
// published in time fails here. Each fetch goes to the next of the given
// URLs, as a load balancer in front of the instances would. There is one
// cache, issuer and audience per kind of token: hti (the default issuer's
// plain HTI launches) and kt (the domain issuer's launches of Tasks).
func runVerifier(args []string) error {
	fs := flag.NewFlagSet("verifier", flag.ContinueOnError)
	urls := fs.String("jwks", "", "comma-separated JWKS URLs (one per instance) of the hti tokens")
	issuer := fs.String("issuer", "", "expected iss of the hti tokens")
	aud := fs.String("audience", "", "expected aud of the hti tokens")
	ktURLs := fs.String("kt-jwks", "", "comma-separated JWKS URLs of the kt tokens")
	ktIssuer := fs.String("kt-issuer", "", "expected iss of the kt tokens")
	ktAud := fs.String("kt-audience", "", "expected aud of the kt tokens")
	if err := fs.Parse(args); err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	kinds := map[string]*trust{
		kindHTI: {cache: &jwksCache{urls: strings.Split(*urls, ","), client: client}, issuer: *issuer, audience: *aud},
		kindKT:  {cache: &jwksCache{urls: strings.Split(*ktURLs, ","), client: client}, issuer: *ktIssuer, audience: *ktAud},
	}
	out := json.NewEncoder(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		idText, rest, _ := strings.Cut(sc.Text(), " ")
		kind, token, _ := strings.Cut(rest, " ")
		id, _ := strconv.Atoi(idText)
		v := verdict{ID: id, OK: true}
		if t, ok := kinds[kind]; !ok {
			v.OK, v.Error = false, fmt.Sprintf("unknown kind of token %q", kind)
		} else if err := verifyToken(t.cache, token, t.issuer, t.audience); err != nil {
			v.OK, v.Error = false, err.Error()
		}
		if err := out.Encode(v); err != nil {
			return err
		}
	}
	return sc.Err()
}

// The kinds of token the verifier knows.
const (
	kindHTI = "hti" // the default issuer's, for the registered module
	kindKT  = "kt"  // the domain issuer's, for the domain's module
)

// trust is what the verifier checks one kind of token against.
type trust struct {
	cache            *jwksCache
	issuer, audience string
}

// jwksCache is the verifier's one cached JWK Set: fetched from the next URL
// in turn when the last one's max-age has run out, never earlier.
type jwksCache struct {
	urls    []string
	next    int
	client  *http.Client
	set     jwk.Set
	expires time.Time
}

// get returns the cached set, fetching it first if it has expired.
func (c *jwksCache) get() (jwk.Set, error) {
	if c.set != nil && time.Now().Before(c.expires) {
		return c.set, nil
	}
	u := c.urls[c.next%len(c.urls)]
	c.next++
	resp, err := c.client.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS %s: %d %v", u, resp.StatusCode, err)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, err
	}
	maxAge := time.Duration(0)
	for _, d := range strings.Split(resp.Header.Get("Cache-Control"), ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(d), "max-age="); ok {
			n, _ := strconv.Atoi(v)
			maxAge = time.Duration(n) * time.Second
		}
	}
	c.set, c.expires = set, time.Now().Add(maxAge)
	return set, nil
}

// verifyToken checks a token's signature against the cached JWKS and its
// iss, aud, exp, iat, lifetime (at most 300 s), sub, resource and jti.
func verifyToken(c *jwksCache, token, issuer, aud string) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return errors.New("not a compact JWS")
	}
	rawHdr, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return err
	}
	var hdr struct{ Alg, Kid string }
	if err := json.Unmarshal(rawHdr, &hdr); err != nil {
		return err
	}
	set, err := c.get()
	if err != nil {
		return err
	}
	key, ok := set.LookupKeyID(hdr.Kid)
	if !ok {
		return fmt.Errorf("kid %s not in the cached JWKS", hdr.Kid)
	}
	if key.Algorithm().String() != hdr.Alg {
		return fmt.Errorf("alg %s, key is for %s", hdr.Alg, key.Algorithm())
	}
	payload, err := jws.Verify([]byte(token), jws.WithKey(jwa.SignatureAlgorithm(hdr.Alg), key))
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	var claims struct {
		Iss, Sub, Resource, JTI string
		Aud                     any
		Iat, Exp                int64
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return err
	}
	now := time.Now().Unix()
	switch {
	case claims.Iss != issuer:
		return fmt.Errorf("iss %q", claims.Iss)
	case claims.Aud != aud:
		return fmt.Errorf("aud %v", claims.Aud)
	case claims.Exp <= now:
		return errors.New("expired")
	case claims.Iat > now:
		return errors.New("iat in the future")
	case claims.Exp-claims.Iat > 300:
		return errors.New("lifetime over 300s")
	case claims.Sub == "" || claims.Resource == "" || claims.JTI == "":
		return errors.New("missing sub, resource or jti")
	}
	return nil
}

// verifierProcess is the soak's side of the independent verifier, run as a
// child process (this binary with the argument "verifier"): tokens go in
// on its stdin, verdicts come out on its stdout.
type verifierProcess struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	inMu     sync.Mutex
	verdicts chan verdict
	done     chan struct{}
}

// verdict is the verifier's answer on one token: the id it was sent with,
// whether it verified, and why not.
type verdict struct {
	ID    int    `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// startVerifier starts the verifier on the comma-separated JWKS URLs of
// the default issuer and of the domain issuer, and reads its verdicts into
// the verdicts channel, closed when it exits.
func startVerifier(jwksURLs, ktJWKSURLs string) (*verifierProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "verifier", "--jwks", jwksURLs, "--issuer", clientID, "--audience", audience,
		"--kt-jwks", ktJWKSURLs, "--kt-issuer", domainClientID, "--kt-audience", domainModule)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	v := &verifierProcess{cmd: cmd, in: in, verdicts: make(chan verdict, 1024), done: make(chan struct{})}
	go func() {
		defer close(v.done)
		defer close(v.verdicts)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var vd verdict
			if json.Unmarshal(sc.Bytes(), &vd) == nil {
				v.verdicts <- vd
			}
		}
	}()
	return v, nil
}

// send hands the verifier one token of a kind under an id.
func (v *verifierProcess) send(id int, kind, token string) {
	v.inMu.Lock()
	defer v.inMu.Unlock()
	fmt.Fprintf(v.in, "%d %s %s\n", id, kind, token)
}

// closeInput tells the verifier no more tokens come.
func (v *verifierProcess) closeInput() {
	v.inMu.Lock()
	defer v.inMu.Unlock()
	_ = v.in.Close()
}

// wait waits until the verifier has answered everything and exited.
func (v *verifierProcess) wait() { <-v.done; _ = v.cmd.Wait() }

// stop kills the verifier.
func (v *verifierProcess) stop() { _ = v.cmd.Process.Kill() }

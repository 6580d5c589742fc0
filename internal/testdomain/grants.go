package testdomain

import (
	"encoding/json"
	"strings"
	"time"
)

// Grant is one access token the token endpoint granted with
// client_credentials, as server.mjs logs it: the client, and the kid and
// alg of the protected header of the client assertion it authenticated
// with (so a test can tell which of a client's keys signed it).
type Grant struct {
	ClientID, Kid, Alg string
}

// TokenGrants returns the grants to clientID logged so far, oldest first.
// The log reaches the Domain through a pipe and may trail the token
// endpoint's HTTP answer: right after a token request, its grant may not be
// here yet. WaitTokenGrants waits for it.
func (d *Domain) TokenGrants(clientID string) []Grant {
	var grants []Grant
	logs := d.stderr.String()
	if i := strings.LastIndexByte(logs, '\n'); i >= 0 {
		logs = logs[:i] // a line still being written is left for the next call
	} else {
		return nil
	}
	for line := range strings.SplitSeq(logs, "\n") {
		var e struct {
			Event    string `json:"event"`
			ClientID string `json:"client_id"`
			Kid      string `json:"kid"`
			Alg      string `json:"alg"`
		}
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil {
			continue // not one of the server's event lines (a Node warning, say)
		}
		if e.Event == "grant.success" && e.ClientID == clientID {
			grants = append(grants, Grant{ClientID: e.ClientID, Kid: e.Kid, Alg: e.Alg})
		}
	}
	return grants
}

// WaitTokenGrants is TokenGrants once at least n grants to clientID are
// logged, or after timeout with those there are then (fewer than n).
func (d *Domain) WaitTokenGrants(clientID string, n int, timeout time.Duration) []Grant {
	deadline := time.Now().Add(timeout)
	for {
		grants := d.TokenGrants(clientID)
		if len(grants) >= n || !time.Now().Before(deadline) {
			return grants
		}
		time.Sleep(10 * time.Millisecond)
	}
}

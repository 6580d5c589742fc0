package launch

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// A ticket is the one-time secret in a launch link: 256 random bits,
// base64url without padding. Only its SHA-256 is stored, so a database
// reader cannot follow a pending link.
const ticketLen = 43

func newTicket() (ticket string, hash []byte) {
	b := make([]byte, 32)
	randomBytes(b)
	ticket = base64.RawURLEncoding.EncodeToString(b)
	return ticket, hashTicket(ticket)
}

func hashTicket(ticket string) []byte {
	sum := sha256.Sum256([]byte(ticket))
	return sum[:]
}

// plausibleTicket rejects strings that cannot be tickets without asking the
// database.
func plausibleTicket(s string) bool {
	if len(s) != ticketLen {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil
}

// newJTI returns a token id of 128 random bits as 32 lowercase hex
// digits. The domain uses the jti as the trace id of its AuditEvents, a
// FHIR id ([A-Za-z0-9\-.]{1,64}, TOP-KT-011), which cannot hold the '_' of
// base64url.
func newJTI() string {
	b := make([]byte, 16)
	randomBytes(b)
	return hex.EncodeToString(b)
}

// newLaunchID returns a random (version 4) UUID for a launch record.
func newLaunchID() string {
	b := make([]byte, 16)
	randomBytes(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// randomBytes fills b from crypto/rand, which since Go 1.24 never fails
// (it aborts the process if the system has no randomness to give).
func randomBytes(b []byte) {
	_, _ = rand.Read(b)
}

package launch

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"time"
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

// newLaunchID returns a version 7 UUID for a launch record (RFC 9562
// §5.7): 48 bits of Unix time in milliseconds, then 74 random bits. Ids
// made one after the other sort by time, so each new launch adds its
// primary-key entry at the right edge of launches_pkey instead of at a
// random page: on a table larger than PostgreSQL's buffers a random key
// makes most inserts read and dirty a leaf page of their own. Nothing reads
// the time back; it is not a secret either (the record holds created_at).
func newLaunchID() string {
	b := make([]byte, 16)
	randomBytes(b[6:])
	ms := uint64(time.Now().UnixMilli())
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// randomBytes fills b from crypto/rand, which since Go 1.24 never fails
// (it aborts the process if the system has no randomness to give).
func randomBytes(b []byte) {
	_, _ = rand.Read(b)
}

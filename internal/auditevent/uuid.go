package auditevent

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
)

// namespace is the UUID namespace of the portal's AuditEvent ids: the
// name-based UUID (version 5) of "https://github.com/ehealth-nl/portal/auditevent"
// in the URL namespace of RFC 9562. It is fixed: changing it would give a
// re-sent event a new id, and the domain a second copy.
const namespace = "b93dbf78-bee1-56d3-b9cd-73fa0c974243"

// urlNamespace is the URL namespace of RFC 9562, appendix C.
const urlNamespace = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"

// uuidV5 returns the name-based UUID (version 5, SHA-1) of name in the
// namespace ns, in its lower-case text form (RFC 9562, section 5.5).
func uuidV5(ns, name string) (string, error) {
	nsBytes, err := parseUUID(ns)
	if err != nil {
		return "", err
	}
	h := sha1.New()
	h.Write(nsBytes)
	h.Write([]byte(name))
	sum := h.Sum(nil)[:16]
	sum[6] = sum[6]&0x0f | 0x50 // version 5
	sum[8] = sum[8]&0x3f | 0x80 // the RFC 9562 variant
	s := hex.EncodeToString(sum)
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32], nil
}

// parseUUID decodes the 16 bytes of a UUID in its 8-4-4-4-12 text form.
func parseUUID(s string) ([]byte, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return nil, fmt.Errorf("auditevent: %q is not a UUID", s)
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36])
	if err != nil {
		return nil, fmt.Errorf("auditevent: %q is not a UUID", s)
	}
	return b, nil
}

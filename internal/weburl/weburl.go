// Package weburl holds the rules the portal applies to the URLs operators
// configure — module launch URLs, FHIR base URLs, the public URL — that
// depend on where the host is: plain http is acceptable only for a host
// on this machine.
package weburl

import (
	"net"
	"strings"
)

// IsLoopbackHost reports whether host names this machine: localhost, a
// name under .localhost (RFC 6761 §6.3), or a loopback IP address.
func IsLoopbackHost(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return ip != nil && ip.IsLoopback()
}

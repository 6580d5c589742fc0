package auditevent

import "testing"

// TestUUIDv5 checks the name-based UUIDs against RFC 9562's example
// (appendix A.4) and derives the package's namespace as its comment says.
func TestUUIDv5(t *testing.T) {
	const dnsNamespace = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	for _, c := range []struct{ ns, name, want string }{
		{dnsNamespace, "www.example.com", "2ed6657d-e927-568b-95e1-2665a8aea6a2"},
		{urlNamespace, "https://github.com/ehealth-nl/portal/auditevent", namespace},
	} {
		got, err := uuidV5(c.ns, c.name)
		if err != nil || got != c.want {
			t.Errorf("uuidV5(%s, %q) = %q, %v; want %q", c.ns, c.name, got, err, c.want)
		}
	}
	for _, ns := range []string{"", "6ba7b810-9dad-11d1-80b4-00c04fd430c", "6ba7b810x9dad-11d1-80b4-00c04fd430c8", "zba7b810-9dad-11d1-80b4-00c04fd430c8"} {
		if _, err := uuidV5(ns, "x"); err == nil {
			t.Errorf("uuidV5(%q) accepted a bad namespace", ns)
		}
	}
}

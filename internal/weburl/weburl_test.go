package weburl

import "testing"

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST": true, "portal.localhost": true, "127.0.0.1": true, "127.8.9.1": true, "::1": true, "[::1]": true,
		"localhost.example.org": false, "example.org": false, "10.0.0.1": false, "::2": false, "": false, "0.0.0.0": false,
	} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

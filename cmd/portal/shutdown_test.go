package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServe_GracefulShutdownFinishesInFlightRequests stops the service
// while a launch request is half sent: the request still completes, new
// connections are refused, and serve returns cleanly.
func TestServe_GracefulShutdownFinishesInFlightRequests(t *testing.T) {
	env := with(baseEnv(t, testDB.Fresh(t)), "PORTAL_SHUTDOWN_TIMEOUT", "20s")
	inst := startServe(t, env)
	mustRun(t, env, "modules", "add", "m", "--launch-url", "https://m.example.org/launch", "--audience", "Device/m")
	key := strings.TrimSpace(mustRun(t, env, "apikeys", "create", "--name", "b", "--scope", "launch"))

	conn, err := net.Dial("tcp", strings.TrimPrefix(inst.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"module":"m","task":"Task/1","user":"Patient/1"}`
	// With Expect: 100-continue the server answers "100 Continue" when the
	// handler starts reading the body: from then on the request is in flight.
	fmt.Fprintf(conn, "POST /api/v1/launches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", key, len(body))
	answers := bufio.NewReader(conn)
	if line, err := answers.ReadString('\n'); err != nil || !strings.Contains(line, "100 Continue") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	if _, err := answers.ReadString('\n'); err != nil { // the empty line after it
		t.Fatal(err)
	}
	fmt.Fprint(conn, body[:10])

	stopped := make(chan error, 1)
	go func() { stopped <- inst.stop() }()
	waitFor(t, "the shutdown to begin", func() bool { return strings.Contains(inst.Logs.String(), `"shutting down"`) })
	// The log line comes just before the listener closes.
	waitFor(t, "new connections to be refused", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(inst.URL, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-stopped:
		t.Fatalf("serve returned (%v) while a request was in flight", err)
	default:
	}

	fmt.Fprint(conn, body[10:])
	resp, err := http.ReadResponse(answers, nil)
	if err != nil {
		t.Fatalf("the in-flight request got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("the in-flight request got %d, want 201", resp.StatusCode)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("serve ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not return after the last request")
	}
	if !strings.Contains(inst.Logs.String(), `"stopped"`) {
		t.Fatal("no stop line in the log")
	}
}

func TestServe_MetricsOnTheirOwnListener(t *testing.T) {
	port := freePort(t)
	env := with(baseEnv(t, testDB.Fresh(t)), "PORTAL_METRICS_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	inst := startServe(t, env)
	if status, _, _ := httpGet(t, inst.URL+"/metrics"); status != http.StatusNotFound {
		t.Fatalf("/metrics on the public listener: %d, want 404", status)
	}
	status, _, body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if status != 200 || !strings.Contains(string(body), "portal_active_key_age_seconds") {
		t.Fatalf("/metrics on its own listener: %d", status)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

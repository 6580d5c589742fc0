// Package instance starts and stops real portal processes for the
// benchmark and soak tools: it builds the binary, makes databases, runs
// "portal serve" with an environment, waits until it is ready, runs CLI
// commands against the same database, and reads the process's peak memory.
package instance

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Build compiles cmd/portal into dir and returns the binary's path.
func Build(ctx context.Context, repo, dir string) (string, error) {
	bin := filepath.Join(dir, "portal")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/portal")
	cmd.Dir = repo
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build portal: %w", err)
	}
	return bin, nil
}

// Database is a database made for one run.
type Database struct {
	admin string
	Name  string // the database name
	URL   string // its connection string
}

// CreateDatabase makes a fresh database on the server of adminURL.
func CreateDatabase(ctx context.Context, adminURL, prefix string) (*Database, error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := prefix + "_" + hex.EncodeToString(b)
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, err
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return nil, err
	}
	u.Path = "/" + name
	return &Database{admin: adminURL, Name: name, URL: u.String()}, nil
}

// Drop removes the database.
func (d *Database) Drop(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, d.admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.Name}.Sanitize()+" WITH (FORCE)")
	return err
}

// NewKEK returns a random KEK in the form PORTAL_KEK takes.
func NewKEK() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// FreePort returns a loopback port nobody listens on right now.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Process is one running "portal serve".
type Process struct {
	Name string            // a label for logs
	URL  string            // where it listens
	Env  map[string]string // the environment it runs with
	cmd  *exec.Cmd
	log  *os.File
	done chan error
}

// Start runs "portal serve" with env (PORTAL_LISTEN_ADDR and
// PORTAL_PUBLIC_URL are set to a free loopback port unless given) and waits
// until /readyz answers 200. Its output goes to logPath.
func Start(ctx context.Context, bin, name string, env map[string]string, logPath string) (*Process, error) {
	p := &Process{Name: name, Env: map[string]string{}, done: make(chan error, 1)}
	for k, v := range env {
		p.Env[k] = v
	}
	if p.Env["PORTAL_LISTEN_ADDR"] == "" {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		p.Env["PORTAL_LISTEN_ADDR"] = "127.0.0.1:" + strconv.Itoa(port)
	}
	p.URL = "http://" + p.Env["PORTAL_LISTEN_ADDR"]
	if p.Env["PORTAL_PUBLIC_URL"] == "" {
		p.Env["PORTAL_PUBLIC_URL"] = p.URL
	}
	if p.Env["PORTAL_METRICS_ADDR"] == "" {
		p.Env["PORTAL_METRICS_ADDR"] = "public" // several instances share the host
	}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p.log = f
	p.cmd = exec.Command(bin, "serve")
	p.cmd.Env = environ(p.Env)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("%s stopped before it was ready (%v); see %s", name, err, logPath)
		case <-ctx.Done():
			_ = p.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = p.Stop()
			return nil, fmt.Errorf("%s not ready after 60s; see %s", name, logPath)
		}
	}
}

func environ(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PORTAL_") || k == "DATABASE_URL" {
			continue // only what the tool sets
		}
		out = append(out, kv)
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// PeakRSS is the process's peak resident memory (VmHWM) in bytes.
func (p *Process) PeakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("VmHWM not found")
}

// Stop sends SIGTERM and waits for the process to finish (SIGKILL after 30 s).
func (p *Process) Stop() error {
	defer p.log.Close()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		return errors.New(p.Name + " did not stop within 30s of SIGTERM")
	}
}

// Command runs a portal CLI command with the same environment and returns
// its standard output.
func Command(ctx context.Context, bin string, env map[string]string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = environ(env)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("portal %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// CPUModel is the machine's CPU model name from /proc/cpuinfo, for the
// headers of benchmark reports; "?" when it cannot be read.
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "?"
}

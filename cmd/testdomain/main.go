// Command testdomain runs the Koppeltaal test domain of testdomain/ (see
// internal/testdomain) for the demo (`make demo-domain`): it starts it,
// seeds a small KT2 scenario, writes the portal's settings for it as shell
// lines, and runs until SIGINT or SIGTERM or until its stdin closes (so a
// caller that keeps no stdin open, `cmd </dev/null`, ends it at once). It
// finds testdomain/server.mjs in the module root above the working
// directory, so it must run inside the repository, with node and
// testdomain/node_modules (`npm ci` in testdomain/).
//
//	go run ./cmd/testdomain -client-id portal -jwks-url http://127.0.0.1:8080/issuers/default/jwks.json \
//		-module-launch-url http://127.0.0.1:8080/demo/module/launch -env-file .demo-domain.env
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ehealth-nl/portal/internal/testdomain"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testdomain:", err)
		os.Exit(1)
	}
}

// run is the command until ctx ends or stdin closes.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("testdomain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clientID := fs.String("client-id", "", "the portal's client_id in the domain (required)")
	jwksURL := fs.String("jwks-url", "", "the URL of the portal's JWKS, fetched by the token endpoint (required)")
	launchURL := fs.String("module-launch-url", "", "the demo module's HTI launch URL, e.g. http://127.0.0.1:8080/demo/module/launch (required)")
	envFile := fs.String("env-file", "", "write the portal's settings here instead of to stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *clientID == "" || *jwksURL == "" || *launchURL == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("-client-id, -jwks-url and -module-launch-url are required, and nothing else")
	}
	d, err := testdomain.Launch(ctx, testdomain.Options{
		Clients: []testdomain.Client{{ID: *clientID, JWKSURL: *jwksURL}},
		Log:     stderr, // why the token endpoint refused the portal, among others
	})
	if err != nil {
		return err
	}
	err = serve(ctx, d, *clientID, *launchURL, *envFile, stdin, stdout, stderr)
	return errors.Join(err, d.Close())
}

// serve seeds the domain, writes the settings and waits for the end.
func serve(ctx context.Context, d *testdomain.Domain, clientID, launchURL, envFile string, stdin io.Reader, stdout, stderr io.Writer) error {
	if _, err := d.SeedResources(ctx, scenario(clientID, launchURL)...); err != nil {
		return err
	}
	env := fmt.Sprintf("PORTAL_FHIR_BASE_URL=%s\nPORTAL_DEVICE=Device/demo-portal\nDEMO_TASKS=%s\n",
		d.FHIRBase, strings.Join(demoTasks, ","))
	if envFile == "" {
		if _, err := io.WriteString(stdout, env); err != nil {
			return err
		}
	} else if err := writeFile(envFile, env); err != nil {
		return err
	}
	fmt.Fprintln(stderr, "test domain ready")

	stdinClosed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stdin); close(stdinClosed) }()
	select {
	case <-ctx.Done():
	case <-stdinClosed:
	}
	return nil
}

// demoTasks are the scenario's Tasks, in DEMO_TASKS.
var demoTasks = []string{"Task/demo-task-patient", "Task/demo-task-team", "Task/demo-task-done"}

// scenario is the demo's domain: a patient with a practitioner and a
// relative in an active CareTeam, the demo module (its Device, its HTI
// Endpoint at launchURL, its ActivityDefinition), the portal's Device, and
// a Task the patient owns, one the team owns and one completed.
func scenario(clientID, launchURL string) []any {
	diary := testdomain.ActivityDefinition("demo-diary", "active", "Device/demo-module", "demo-module-hti")
	diary["title"] = "Demo diary"
	const patient, diaryRef = "Patient/demo-patient", "ActivityDefinition/demo-diary"
	return []any{
		testdomain.Patient("demo-patient"),
		testdomain.Practitioner("demo-practitioner"),
		testdomain.RelatedPerson("demo-relative", patient, "true"),
		testdomain.CareTeam("demo-team", "active", patient, "Practitioner/demo-practitioner", "RelatedPerson/demo-relative"),
		testdomain.Device("demo-module", "active", "demo-module"),
		testdomain.Device("demo-portal", "active", clientID),
		testdomain.Endpoint("demo-module-hti", "active", "hti-smart-on-fhir", launchURL),
		diary,
		testdomain.Task("demo-task-patient", "ready", "order", patient, patient, diaryRef),
		testdomain.Task("demo-task-team", "ready", "order", patient, "CareTeam/demo-team", diaryRef),
		testdomain.Task("demo-task-done", "completed", "order", patient, patient, diaryRef),
	}
}

// writeFile writes the settings to path through a temporary file, so a
// reader waiting for path never sees half of them.
func writeFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

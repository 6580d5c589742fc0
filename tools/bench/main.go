// Command bench measures the portal as a real process against a real
// PostgreSQL, each figure beside a baseline measured in the same run:
//
//   - JWKS requests per second beside a bare net/http handler (in its own
//     process) serving the same bytes with the same headers;
//   - launches created and redeemed per second (POST /api/v1/launches, then
//     GET the launch link) with RS512 and with ES384, one client and then
//     -concurrency clients, beside the raw signing rate of that algorithm
//     (jwx over the same key type, one goroutine and then all cores);
//   - p50/p99 latency of both at a fixed rate of half the measured peak
//     (open loop: latency counts from the scheduled start, so a slow answer
//     cannot hide the requests queued behind it);
//   - the service's peak resident memory;
//   - the CPU of one launch at the 16-client peak, read from /proc: of the
//     portal process, of PostgreSQL (all its processes) and of this load
//     generator, beside two floors measured in the same run: the signature
//     alone (jwx, in this process) and the launch's own SQL statements alone
//     (launch.SQLFloor through pgx: no HTTP, no API key, no signature);
//     each measured right after a CHECKPOINT.
//
// With -baseline REF (make bench BASELINE=REF) it also builds that git
// revision in a temporary worktree and measures both binaries, one after
// the other for each algorithm (the order alternating), against the same
// database server, and prints new/old ratios.
//
// It prints tables. make bench runs it with a PostgreSQL from
// scripts/postgres.sh (PORTAL_BENCH_DATABASE_URL). Nothing here asserts a
// speed: the machines are shared and noisy.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/tools/internal/instance"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "bare" {
		serveBare(os.Args[2])
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type row struct {
	what  string
	rate  float64
	p50   time.Duration
	p99   time.Duration
	ratio string
}

// binary is one portal build under measurement.
type binary struct {
	name string // "new", or "baseline <rev>"
	path string
}

// measured is what benchAlgorithm found for one binary and algorithm.
type measured struct {
	bin, alg string
	rows     []row
	peakRSS  int64
	jwks     float64 // JWKS requests/s of the portal at the peak; 0 when not measured
	bareJWKS float64
	rate     float64       // launches/s at the peak
	p99Half  time.Duration // p99 at half the peak
	cpu      cpuUsed       // CPU per launch at the peak
	sign     time.Duration // CPU of one signature alone (this process)
	sqlFloor time.Duration // PostgreSQL CPU of one launch's SQL alone
	updates  int64         // UPDATEs of launches rows in the whole run (the claims)
	hot      int64         // of which heap-only (no index touched)
}

func run() error {
	duration := flag.Duration("duration", 8*time.Second, "length of each measurement")
	concurrency := flag.Int("concurrency", 16, "concurrent clients for the peak measurements")
	algs := flag.String("algs", "RS512,ES384", "signing algorithms to measure")
	jwksOnly := flag.Bool("jwks-only", false, "measure the JWKS only")
	baseline := flag.String("baseline", "", "a git revision to build and measure beside this tree (make bench BASELINE=REF)")
	rounds := flag.Int("rounds", 1, "how many times to measure everything (which binary goes first alternating); figures are the medians")
	flag.Parse()
	admin := os.Getenv("PORTAL_BENCH_DATABASE_URL")
	if admin == "" {
		return errors.New("set PORTAL_BENCH_DATABASE_URL (make bench finds or starts PostgreSQL and sets it)")
	}
	ctx := context.Background()
	work, err := os.MkdirTemp("", "portal-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	repo, _ := os.Getwd()
	newBin, err := instance.Build(ctx, repo, work)
	if err != nil {
		return err
	}
	bins := []binary{{name: "new", path: newBin}}
	if *baseline != "" {
		path, rev, err := buildBaseline(ctx, repo, work, *baseline)
		if err != nil {
			return err
		}
		bins = append(bins, binary{name: "baseline " + rev, path: path})
	}
	pgVersion := serverVersion(ctx, admin)

	if *rounds < 1 {
		return errors.New("-rounds must be at least 1")
	}
	var byRound [][]measured
	for round := range *rounds {
		var all []measured
		for i, alg := range strings.Split(*algs, ",") {
			order := bins
			if (i+round)%2 == 1 && len(bins) == 2 { // alternate which binary goes first
				order = []binary{bins[1], bins[0]}
			}
			for _, b := range order {
				m, err := benchAlgorithm(ctx, b, admin, work, alg, *duration, *concurrency, i == 0, *jwksOnly)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", b.name, alg, err)
				}
				all = append(all, m)
			}
		}
		// The same order in every round, for medianOfRounds.
		slices.SortStableFunc(all, func(a, b measured) int { return strings.Compare(a.alg+a.bin, b.alg+b.bin) })
		byRound = append(byRound, all)
	}
	all := medianOfRounds(byRound)

	fmt.Printf("\nportal bench — %s, %d CPUs (%s), %s, PostgreSQL %s, %s per measurement, %d concurrent clients, %d round(s)\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), instance.CPUModel(), runtime.Version(), pgVersion, *duration, *concurrency, *rounds)
	for _, b := range bins {
		if len(bins) > 1 {
			fmt.Printf("\n%s\n", b.name)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "measurement\t rate/s\t p50\t p99\t ratio\t")
		var memory []string
		for _, m := range all {
			if m.bin != b.name {
				continue
			}
			for _, r := range m.rows {
				rate := "-"
				if r.rate > 0 {
					rate = fmt.Sprintf("%.0f", r.rate)
				}
				fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t\n", r.what, rate, dur(r.p50), dur(r.p99), r.ratio)
			}
			memory = append(memory, fmt.Sprintf("%s instance %.0f MiB", m.alg, float64(m.peakRSS)/(1<<20)))
		}
		_ = tw.Flush()
		fmt.Printf("peak memory (VmHWM): %s\n", strings.Join(memory, ", "))
	}
	if !*jwksOnly {
		printCPU(all, *concurrency)
	}
	printRounds(byRound)
	if len(bins) == 2 {
		printRatios(all, bins, *jwksOnly)
	}
	return nil
}

// printCPU prints the CPU of one launch at the peak beside its floors.
func printCPU(all []measured, conc int) {
	fmt.Printf("\nCPU per launch (created + redeemed, %d clients), microseconds\n", conc)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "binary\t alg\t portal\t signature\t portal beyond signature\t PostgreSQL\t SQL floor\t PostgreSQL / floor\t load generator\t HOT claims\t")
	for _, m := range all {
		floorRatio := "-"
		if m.sqlFloor > 0 {
			floorRatio = fmt.Sprintf("%.2f", float64(m.cpu.postgres)/float64(m.sqlFloor))
		}
		hot := "-"
		if m.updates > 0 {
			hot = fmt.Sprintf("%.0f%%", 100*float64(m.hot)/float64(m.updates))
		}
		fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", m.bin, m.alg, us(m.cpu.portal), us(m.sign),
			us(m.cpu.portal-m.sign), us(m.cpu.postgres), us(m.sqlFloor), floorRatio, us(m.cpu.self), hot)
	}
	_ = tw.Flush()
	fmt.Println("portal and PostgreSQL CPU are read from /proc over the peak measurement and divided by the launches it made;" +
		" the signature floor is jwx signing in the load generator, the SQL floor PostgreSQL's CPU for launch.SQLFloor (the create and claim statements alone);" +
		" HOT claims: the share of UPDATEs of launches rows in the run that were heap-only (wrote no index entry)")
}

// printRatios prints new/old for each algorithm.
func printRatios(all []measured, bins []binary, jwksOnly bool) {
	find := func(bin, alg string) *measured {
		for i := range all {
			if all[i].bin == bin && all[i].alg == alg {
				return &all[i]
			}
		}
		return nil
	}
	fmt.Printf("\nnew / %s\n", bins[1].name)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "alg\t launches/s at the peak\t p99 at half the peak\t portal CPU per launch\t portal CPU beyond signature\t PostgreSQL CPU per launch\t JWKS/s\t peak memory\t")
	ratio := func(a, b float64) string {
		if b == 0 || a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for _, m := range all {
		if m.bin != bins[0].name {
			continue
		}
		o := find(bins[1].name, m.alg)
		if o == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", m.alg, ratio(m.rate, o.rate), ratio(float64(m.p99Half), float64(o.p99Half)),
			ratio(float64(m.cpu.portal), float64(o.cpu.portal)), ratio(float64(m.cpu.portal-m.sign), float64(o.cpu.portal-o.sign)),
			ratio(float64(m.cpu.postgres), float64(o.cpu.postgres)), ratio(m.jwks, o.jwks), ratio(float64(m.peakRSS), float64(o.peakRSS)))
	}
	_ = tw.Flush()
	_ = jwksOnly
}

func dur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// benchAlgorithm starts an instance of binary b signing with alg and
// measures it.
func benchAlgorithm(ctx context.Context, b binary, admin, work, alg string, d time.Duration, conc int, withJWKS, jwksOnly bool) (measured, error) {
	m := measured{bin: b.name, alg: alg}
	db, err := instance.CreateDatabase(ctx, admin, "portal_bench_"+strings.ToLower(alg))
	if err != nil {
		return m, err
	}
	defer func() { _ = db.Drop(context.Background()) }()
	env := map[string]string{
		"DATABASE_URL": db.URL, "PORTAL_CLIENT_ID": "portal-bench", "PORTAL_FHIR_BASE_URL": "https://fhir.example.org/fhir",
		"PORTAL_KEK": instance.NewKEK(), "PORTAL_SIGNING_ALG": alg, "PORTAL_ISSUER_PROFILE": "hti", "PORTAL_LOG_LEVEL": "info",
	}
	logName := strings.ReplaceAll(b.name, " ", "-") + "-" + alg + ".log"
	p, err := instance.Start(ctx, b.path, "portal-"+alg, env, filepath.Join(work, logName))
	if err != nil {
		return m, err
	}
	defer func() { _ = p.Stop() }()
	key, err := instance.Command(ctx, b.path, p.Env, "apikeys", "create", "--name", "bench", "--scope", "launch")
	if err != nil {
		return m, err
	}
	if _, err := instance.Command(ctx, b.path, p.Env, "modules", "add", "bench", "--launch-url", "https://module.example.org/launch", "--audience", "Device/bench"); err != nil {
		return m, err
	}
	client := newClient(conc)
	prefix := alg
	if b.name != "new" {
		prefix = b.name + ", " + alg
	}

	if withJWKS {
		jrows, portalRate, bareRate, err := benchJWKS(ctx, client, p.URL, work, d, conc)
		if err != nil {
			return m, err
		}
		m.rows, m.jwks, m.bareJWKS = append(m.rows, jrows...), portalRate, bareRate
	}
	if jwksOnly {
		m.peakRSS, err = p.PeakRSS()
		return m, err
	}

	launchOnce := func() error { return createAndRedeem(client, p.URL, key) }
	for i := 0; i < 20; i++ { // warm up connections, JIT-free but caches and pools
		if err := launchOnce(); err != nil {
			return m, err
		}
	}
	before := sampleCPU(p.Pid())
	raw1 := rawSigningRate(alg, 1, d)
	m.sign = perOp(sampleCPU(p.Pid()).sub(before, nil).self, raw1.n)
	one, _ := closedLoop(d, 1, launchOnce)
	rawN := rawSigningRate(alg, runtime.GOMAXPROCS(0), d)
	checkpoint(ctx, admin)
	before = sampleCPU(p.Pid())
	peak, _ := closedLoop(d, conc, launchOnce)
	after := sampleCPU(p.Pid())
	pids, err := postgresPids(ctx, admin, db.Name)
	if err != nil {
		return m, err
	}
	used := after.sub(before, pids)
	m.cpu = cpuUsed{portal: perOp(used.portal, peak.n), postgres: perOp(used.postgres, peak.n), self: perOp(used.self, peak.n)}
	m.rate = peak.rate
	lat, errs := openLoop(d, peak.rate/2, conc*2, launchOnce)
	if errs > 0 {
		return m, fmt.Errorf("%d launches failed at the fixed rate", errs)
	}
	m.p99Half = lat.p99
	if m.updates, m.hot, err = hotUpdates(ctx, db.URL); err != nil {
		return m, err
	}
	if m.sqlFloor, err = sqlFloor(ctx, admin, db, conc, peak.n); err != nil {
		return m, err
	}
	m.rows = append(m.rows,
		row{what: alg + " raw signing, 1 goroutine", rate: raw1.rate},
		row{what: prefix + " launches created+redeemed, 1 client", rate: one.rate, p50: one.p50, p99: one.p99, ratio: fmt.Sprintf("%.2f of raw", one.rate/raw1.rate)},
		row{what: fmt.Sprintf("%s raw signing, %d goroutines", alg, runtime.GOMAXPROCS(0)), rate: rawN.rate},
		row{what: fmt.Sprintf("%s launches created+redeemed, %d clients", prefix, conc), rate: peak.rate, p50: peak.p50, p99: peak.p99, ratio: fmt.Sprintf("%.2f of raw", peak.rate/rawN.rate)},
		row{what: fmt.Sprintf("%s launches at %.0f/s (half the peak)", prefix, peak.rate/2), p50: lat.p50, p99: lat.p99},
	)
	m.peakRSS, err = p.PeakRSS()
	return m, err
}

// hotUpdates reads how many UPDATEs of launches rows the database has
// counted, and how many of them were heap-only (HOT: no index entry
// written). The statistics reach pg_stat_user_tables within a second of
// the transactions.
func hotUpdates(ctx context.Context, dbURL string) (updates, hot int64, err error) {
	time.Sleep(1500 * time.Millisecond)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'launches'`).Scan(&updates, &hot)
	return updates, hot, err
}

// sqlFloor runs n launches' SQL alone (launch.SQLFloor) against the
// instance's database from conc connections, and returns PostgreSQL's CPU
// per launch.
func sqlFloor(ctx context.Context, admin string, db *instance.Database, conc int, n int64) (time.Duration, error) {
	n = max(n, 500)
	pool, err := postgres.Connect(ctx, db.URL)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	m, err := launch.NewRegistry(pool, false).Module(ctx, "bench")
	if err != nil {
		return 0, err
	}
	if err := launch.SQLFloor(ctx, pool, m, conc, conc); err != nil { // warm the pool and its statement cache
		return 0, err
	}
	checkpoint(ctx, admin)
	before := sampleCPU(0)
	if err := launch.SQLFloor(ctx, pool, m, int(n), conc); err != nil {
		return 0, err
	}
	after := sampleCPU(0)
	pids, err := postgresPids(ctx, admin, db.Name)
	if err != nil {
		return 0, err
	}
	return perOp(after.sub(before, pids).postgres, n), nil
}

// checkpoint asks PostgreSQL for a checkpoint before a CPU measurement,
// so that every measurement starts at the same point of the checkpoint
// cycle: the first change of each page after a checkpoint writes the whole
// page to the WAL, and a checkpoint that happens to fall inside one
// measurement (every 5 minutes by default, or after the database of the
// previous one was dropped) would charge that measurement alone with it.
// Without the right to (superuser or pg_checkpoint) it says so and goes on.
func checkpoint(ctx context.Context, admin string) {
	conn, err := pgx.Connect(ctx, admin)
	if err == nil {
		_, err = conn.Exec(ctx, "CHECKPOINT")
		_ = conn.Close(ctx)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: no checkpoint before the measurement (%v); CPU figures vary more\n", err)
	}
}

// benchJWKS measures the portal's JWKS beside a bare handler serving the
// same bytes from its own process.
func benchJWKS(ctx context.Context, client *http.Client, portalURL, work string, d time.Duration, conc int) (rows []row, portalRate, bareRate float64, err error) {
	resp, err := client.Get(portalURL + "/.well-known/jwks.json")
	if err != nil {
		return nil, 0, 0, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	file := filepath.Join(work, "jwks.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		return nil, 0, 0, err
	}
	port, err := instance.FreePort()
	if err != nil {
		return nil, 0, 0, err
	}
	self, _ := os.Executable()
	bare := exec.CommandContext(ctx, self, "bare", file)
	bare.Env = append(os.Environ(), "BARE_ADDR=127.0.0.1:"+strconv.Itoa(port))
	if err := bare.Start(); err != nil {
		return nil, 0, 0, err
	}
	defer func() { _ = bare.Process.Kill(); _ = bare.Wait() }()
	bareURL := "http://127.0.0.1:" + strconv.Itoa(port) + "/.well-known/jwks.json"
	for i := 0; i < 100; i++ {
		if r, err := http.Get(bareURL); err == nil {
			r.Body.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	get := func(u string) func() error {
		return func() error {
			r, err := client.Get(u)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if r.StatusCode != 200 {
				return fmt.Errorf("status %d", r.StatusCode)
			}
			return nil
		}
	}
	bareRes, _ := closedLoop(d, conc, get(bareURL))
	portalRes, _ := closedLoop(d, conc, get(portalURL+"/.well-known/jwks.json"))
	bareLat, _ := openLoop(d, bareRes.rate/2, conc*2, get(bareURL))
	portalLat, _ := openLoop(d, portalRes.rate/2, conc*2, get(portalURL+"/.well-known/jwks.json"))
	return []row{
		{what: fmt.Sprintf("JWKS, bare net/http handler, %d clients", conc), rate: bareRes.rate, p50: bareRes.p50, p99: bareRes.p99},
		{what: fmt.Sprintf("JWKS, portal, %d clients", conc), rate: portalRes.rate, p50: portalRes.p50, p99: portalRes.p99, ratio: fmt.Sprintf("%.2f of bare", portalRes.rate/bareRes.rate)},
		{what: fmt.Sprintf("JWKS, bare, at %.0f/s (half its peak)", bareRes.rate/2), p50: bareLat.p50, p99: bareLat.p99},
		{what: fmt.Sprintf("JWKS, portal, at %.0f/s (half its peak)", portalRes.rate/2), p50: portalLat.p50, p99: portalLat.p99},
	}, portalRes.rate, bareRes.rate, nil
}

// serveBare serves a file as a JWKS with the portal's headers: the
// baseline of what any Go server spends on such a response.
func serveBare(file string) {
	body, err := os.ReadFile(file)
	if err != nil {
		panic(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("ETag", `"bare"`)
		_, _ = w.Write(body)
	})
	ln, err := net.Listen("tcp", os.Getenv("BARE_ADDR"))
	if err != nil {
		panic(err)
	}
	_ = http.Serve(ln, h)
}

func newClient(conc int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = conc*4, conc*4
	return &http.Client{Transport: t, Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var launchBody = []byte(`{"module":"bench","task":"Task/bench-1","user":"Practitioner/dr-1","patient":"Patient/p-1"}`)

// createAndRedeem creates a launch and follows its link, as a portal backend and a
// browser do.
func createAndRedeem(client *http.Client, base, key string) error {
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/launches", strings.NewReader(string(launchBody)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("create launch: %d %s", resp.StatusCode, body)
	}
	var created struct {
		LaunchURL string `json:"launch_url"`
	}
	if err := json.Unmarshal(body, &created); err != nil {
		return err
	}
	resp, err = client.Post(created.LaunchURL, "", nil) // redeem, as the launch page does
	if err != nil {
		return err
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `name="launch"`) {
		return fmt.Errorf("redeem launch: %d", resp.StatusCode)
	}
	return nil
}

type result struct {
	rate     float64
	p50, p99 time.Duration
	n        int64 // operations done
}

func percentiles(lat []time.Duration) (time.Duration, time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)*50/100], lat[min(len(lat)-1, len(lat)*99/100)]
}

// closedLoop runs fn from n workers as fast as they can for d.
func closedLoop(d time.Duration, n int, fn func() error) (result, int64) {
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs atomic.Int64
		done atomic.Int64
		wg   sync.WaitGroup
	)
	end := time.Now().Add(d)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) {
				t := time.Now()
				if err := fn(); err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t))
				done.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	p50, p99 := percentiles(lat)
	return result{rate: float64(done.Load()) / elapsed.Seconds(), p50: p50, p99: p99, n: done.Load()}, errs.Load()
}

// openLoop starts fn at a fixed rate for d, whatever the answers take, and
// measures each latency from its scheduled start.
func openLoop(d time.Duration, rate float64, maxInFlight int, fn func() error) (result, int64) {
	if rate < 1 {
		rate = 1
	}
	interval := time.Duration(float64(time.Second) / rate)
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	slots := make(chan struct{}, maxInFlight*8)
	start := time.Now()
	for i := 0; ; i++ {
		scheduled := start.Add(time.Duration(i) * interval)
		if scheduled.Sub(start) >= d {
			break
		}
		time.Sleep(time.Until(scheduled))
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := fn(); err != nil {
				errs.Add(1)
				return
			}
			l := time.Since(scheduled)
			mu.Lock()
			lat = append(lat, l)
			mu.Unlock()
		}()
	}
	wg.Wait()
	p50, p99 := percentiles(lat)
	return result{rate: rate, p50: p50, p99: p99}, errs.Load()
}

// rawSigningRate signs a launch-token-sized payload with jwx and a fresh
// key of alg's type, from n goroutines for d: the ceiling a launch can reach.
func rawSigningRate(alg string, n int, d time.Duration) result {
	var key crypto.Signer
	switch {
	case strings.HasPrefix(alg, "ES"):
		curve := elliptic.P256()
		if alg == "ES384" {
			curve = elliptic.P384()
		}
		key, _ = ecdsa.GenerateKey(curve, rand.Reader)
	default:
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	payload := []byte(`{"iss":"portal-bench","aud":"Device/bench","sub":"Practitioner/dr-1","resource":"Task/bench-1","patient":"Patient/p-1","intent":"plan","hti-version":"2.0","jti":"Zt1bKq3X5i4sN0u2m9wL8Axy","iat":1764000000,"exp":1764000300}`)
	res, _ := closedLoop(d, n, func() error {
		hdr := jws.NewHeaders()
		_ = hdr.Set(jws.KeyIDKey, "bench-kid-0000000000")
		_ = hdr.Set(jws.TypeKey, "JWT")
		_, err := jws.Sign(payload, jws.WithKey(jwa.SignatureAlgorithm(alg), key, jws.WithProtectedHeaders(hdr)))
		return err
	})
	return res
}

func serverVersion(ctx context.Context, admin string) string {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "?"
	}
	defer conn.Close(ctx)
	var v string
	_ = conn.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v
}

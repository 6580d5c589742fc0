package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuSample is the CPU time (user + system) used so far by the portal
// process, by each PostgreSQL process (by pid), and by this process, the
// load generator.
type cpuSample struct {
	portal, self time.Duration
	postgres     map[int]time.Duration
}

// cpuUsed is the CPU used between two samples: postgres counts the
// PostgreSQL processes that serve the bench's database, and the server's
// own background processes (writers, checkpointer), so that other
// databases' sessions on a shared server are left out; a process that
// ended in between is left out too (its time went with it).
type cpuUsed struct {
	portal, postgres, self time.Duration
}

// sub is the CPU used from b to a by the portal, this process, and the
// PostgreSQL processes of pids.
func (a cpuSample) sub(b cpuSample, pids map[int]bool) cpuUsed {
	u := cpuUsed{portal: a.portal - b.portal, self: a.self - b.self}
	for pid, t := range a.postgres {
		if pids[pid] {
			u.postgres += t - b.postgres[pid] // a process started since counts whole
		}
	}
	return u
}

// sampleCPU reads the CPU times from /proc.
func sampleCPU(portalPid int) cpuSample {
	s := cpuSample{postgres: map[int]time.Duration{}}
	s.portal, _, _ = procCPU(strconv.Itoa(portalPid))
	s.self, _, _ = procCPU("self")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if cpu, comm, err := procCPU(filepath.Base(d)); err == nil && comm == "postgres" {
			s.postgres[pid] = cpu
		}
	}
	return s
}

// postgresPids are the PostgreSQL processes that work for database db:
// its client backends and the server's background processes (those with
// no database), as pg_stat_activity lists them now.
func postgresPids(ctx context.Context, adminURL, db string) (map[int]bool, error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL`, db)
	if err != nil {
		return nil, err
	}
	pids := map[int]bool{}
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return nil, err
		}
		pids[pid] = true
	}
	rows.Close()
	// The postmaster is in no view: it is the parent of the others.
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(firstKey(pids)) + "/stat"); err == nil {
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 1 {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				pids[ppid] = true
			}
		}
	}
	return pids, rows.Err()
}

// firstKey is any key of m, 0 for none.
func firstKey(m map[int]bool) int {
	for k := range m {
		return k
	}
	return 0
}

// procCPU returns utime + stime of a process and its command name.
func procCPU(pid string) (time.Duration, string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, "", err
	}
	// pid (comm) state ppid ... : comm may hold spaces, so split after
	// the last ')'. utime and stime are fields 14 and 15 of the line.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return 0, "", fmt.Errorf("/proc/%s/stat: no command name", pid)
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 13 {
		return 0, "", fmt.Errorf("/proc/%s/stat: %d fields", pid, len(fields))
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, "", fmt.Errorf("/proc/%s/stat: utime %q stime %q", pid, fields[11], fields[12])
	}
	return time.Duration(utime+stime) * clockTick, s[open+1 : end], nil
}

// perOp divides a CPU time among n operations.
func perOp(d time.Duration, n int64) time.Duration {
	if n <= 0 {
		return 0
	}
	return d / time.Duration(n)
}

// us formats a duration in whole microseconds.
func us(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }

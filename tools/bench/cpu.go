package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuSample is the CPU time (user + system) used so far by the portal
// process, by every PostgreSQL process (postmaster, backends, writers),
// and by this process, the load generator.
type cpuSample struct {
	portal, postgres, self time.Duration
}

// sub is the CPU used between two samples.
func (a cpuSample) sub(b cpuSample) cpuSample {
	return cpuSample{portal: a.portal - b.portal, postgres: a.postgres - b.postgres, self: a.self - b.self}
}

// sampleCPU reads the CPU times from /proc. A PostgreSQL backend that
// ended between two samples takes its time with it; the bench keeps its
// connections open, so that does not happen while it measures.
func sampleCPU(portalPid int) cpuSample {
	var s cpuSample
	s.portal, _, _ = procCPU(strconv.Itoa(portalPid))
	s.self, _, _ = procCPU("self")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		if cpu, comm, err := procCPU(filepath.Base(d)); err == nil && comm == "postgres" {
			s.postgres += cpu
		}
	}
	return s
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

package auditoutbox

import (
	"strings"
	"testing"
	"time"
)

// TestBackoff: the n-th failed attempt waits between half and all of
// min(RetryMax, RetryBase·2^(n-1)), and the waits are spread (jitter).
func TestBackoff(t *testing.T) {
	w := &Worker{cfg: Config{RetryBase: time.Second, RetryMax: 10 * time.Second}}
	for n, full := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second,
		5: 10 * time.Second, 64: 10 * time.Second} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := w.backoff(n)
			if d < full/2 || d > full {
				t.Fatalf("attempt %d waits %s, want %s to %s", n, d, full/2, full)
			}
			seen[d] = true
		}
		if len(seen) < 100 {
			t.Errorf("attempt %d: only %d different waits in 200: no jitter", n, len(seen))
		}
	}
}

// TestOutcomeDesc: a refusal's description is one line of at most 1000
// bytes of valid UTF-8, whatever the detail held.
func TestOutcomeDesc(t *testing.T) {
	if got := outcomeDesc("not-owner", "Task/t-1: owner is Practitioner/p-2"); got != "launch refused: not-owner: Task/t-1: owner is Practitioner/p-2" {
		t.Errorf("got %q", got)
	}
	long := outcomeDesc("rule", "line\nbreak\t"+strings.Repeat("é", 800))
	if len(long) > 1000 || !isOneLine(long) {
		t.Errorf("%d bytes, one line %t", len(long), isOneLine(long))
	}
}

func isOneLine(s string) bool {
	for _, r := range s {
		if r == '\n' || r == '\t' || r == '\uFFFD' {
			return false
		}
	}
	return true
}

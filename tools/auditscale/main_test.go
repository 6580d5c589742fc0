package main

import (
	"testing"
	"time"
)

func TestMarker_RoundTripsAndRefusesOtherComments(t *testing.T) {
	g := generation{rows: 10_000_000, version: generatorVersion, at: time.Date(2026, 12, 3, 10, 38, 52, 0, time.UTC),
		took: 25*time.Minute + 27*time.Second, vacuum: 24 * time.Second, batchRows: 500_000}
	got, ok := parseMarker(g.marker())
	if !ok || got.rows != g.rows || got.version != g.version || !got.at.Equal(g.at) || got.took != g.took || got.vacuum != g.vacuum || got.batchRows != g.batchRows {
		t.Fatalf("parseMarker(%q) = %+v, %v", g.marker(), got, ok)
	}
	for _, other := range []string{"", "a database of someone else", "auditscale rows=x generator=1"} {
		if _, ok := parseMarker(other); ok {
			t.Errorf("parseMarker(%q) accepted", other)
		}
	}
}

func TestPlanShape_IgnoresFiguresAndConditions(t *testing.T) {
	a := `Limit  (cost=5.11..28.79 rows=6 width=829) (actual time=0.042..0.043 rows=2 loops=1)
  Buffers: shared hit=6
  ->  Index Scan Backward using launches_task on launches  (cost=0.42..28.52 rows=6 width=829) (actual time=0.022..0.027 rows=2 loops=1)
        Index Cond: (task = 'Task/1'::text)
Planning Time: 0.174 ms
Execution Time: 0.071 ms`
	b := `Limit  (cost=1.00..2.00 rows=51 width=829) (actual time=1.0..2.0 rows=51 loops=1)
  ->  Index Scan Backward using launches_task on launches  (cost=0.42..99.52 rows=600 width=829) (actual time=0.1..0.9 rows=51 loops=1)
        Index Cond: (task = 'Task/2'::text)
Execution Time: 2.5 ms`
	c := `Limit  (cost=1.00..2.00 rows=51 width=829) (actual time=1.0..2.0 rows=51 loops=1)
  ->  Index Scan Backward using launches_created on launches  (cost=0.42..99.52 rows=600 width=829) (actual time=0.1..0.9 rows=51 loops=1)
        Filter: (task = 'Task/2'::text)`
	if planShape(a) != planShape(b) {
		t.Errorf("same plans, different shapes: %q, %q", planShape(a), planShape(b))
	}
	if planShape(a) == planShape(c) {
		t.Errorf("different indexes, same shape %q", planShape(a))
	}
	if want := "Limit / Index Scan Backward using launches_task on launches"; planShape(a) != want {
		t.Errorf("planShape = %q, want %q", planShape(a), want)
	}
}

func TestLiteral_RendersTheArgumentsOfTheLists(t *testing.T) {
	at := time.Date(2026, 6, 1, 0, 0, 0, 123000, time.UTC)
	s := "it's"
	var noTime *time.Time
	var noString *string
	for _, tc := range []struct {
		in   any
		want string
	}{
		{nil, "NULL"}, {"Task/1", "'Task/1'"}, {&s, "'it''s'"}, {noString, "NULL"}, {&at, "'2026-06-01T00:00:00.000123Z'"},
		{noTime, "NULL"}, {51, "51"},
	} {
		if got, err := literal(tc.in); err != nil || got != tc.want {
			t.Errorf("literal(%#v) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := literal(1.5); err == nil {
		t.Error("a float64 was rendered")
	}
}

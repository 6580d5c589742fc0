package main

import (
	"fmt"
	"os"
	"slices"
	"text/tabwriter"
	"time"
)

// medianOfRounds folds the measurements of several rounds into one per
// binary and algorithm: each figure is the median of its rounds (peak
// memory the largest), and the rows printed are those of the round whose
// peak rate is the median. On a machine shared with others one round can
// be caught by a neighbour's burst; the median of three is not.
func medianOfRounds(rounds [][]measured) []measured {
	if len(rounds) == 1 {
		return rounds[0]
	}
	var out []measured
	for i, first := range rounds[0] {
		same := make([]measured, len(rounds))
		for r := range rounds {
			same[r] = rounds[r][i]
		}
		m := first
		m.rate = medianFloat(same, func(x measured) float64 { return x.rate })
		m.jwks = medianFloat(same, func(x measured) float64 { return x.jwks })
		m.bareJWKS = medianFloat(same, func(x measured) float64 { return x.bareJWKS })
		m.p99Half = medianDur(same, func(x measured) time.Duration { return x.p99Half })
		m.cpu.portal = medianDur(same, func(x measured) time.Duration { return x.cpu.portal })
		m.cpu.postgres = medianDur(same, func(x measured) time.Duration { return x.cpu.postgres })
		m.cpu.self = medianDur(same, func(x measured) time.Duration { return x.cpu.self })
		m.sign = medianDur(same, func(x measured) time.Duration { return x.sign })
		m.sqlFloor = medianDur(same, func(x measured) time.Duration { return x.sqlFloor })
		m.updates, m.hot = 0, 0
		for _, x := range same {
			m.peakRSS = max(m.peakRSS, x.peakRSS)
			m.updates += x.updates
			m.hot += x.hot
		}
		byRate := slices.Clone(same)
		slices.SortFunc(byRate, func(a, b measured) int { return cmpFloat(a.rate, b.rate) })
		m.rows = byRate[len(byRate)/2].rows
		out = append(out, m)
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func medianFloat(ms []measured, f func(measured) float64) float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func medianDur(ms []measured, f func(measured) time.Duration) time.Duration {
	v := make([]time.Duration, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// printRounds prints, for several rounds, each round's peak rate and CPU
// per launch, so that the spread behind the medians is visible.
func printRounds(rounds [][]measured) {
	if len(rounds) == 1 {
		return
	}
	fmt.Printf("\neach round (the tables above and below are the medians of %d)\n", len(rounds))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\t binary\t alg\t launches/s\t p99 at half\t portal µs\t portal beyond signature µs\t PostgreSQL µs\t SQL floor µs\t JWKS/s\t bare JWKS/s\t")
	for r, round := range rounds {
		for _, m := range round {
			jwks, bare := "-", "-"
			if m.jwks > 0 {
				jwks, bare = fmt.Sprintf("%.0f", m.jwks), fmt.Sprintf("%.0f", m.bareJWKS)
			}
			fmt.Fprintf(tw, "%d\t %s\t %s\t %.0f\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", r+1, m.bin, m.alg, m.rate, dur(m.p99Half),
				us(m.cpu.portal), us(m.cpu.portal-m.sign), us(m.cpu.postgres), us(m.sqlFloor), jwks, bare)
		}
	}
	_ = tw.Flush()
}

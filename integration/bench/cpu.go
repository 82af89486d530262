package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat.
const clockTick = 100

// components are the processes whose CPU time the benchmark reports.
var components = []string{"vault", "etcd", "kube-apiserver", "ferry-broker", "ferry-writer", "bench"}

// cpuSeconds returns the CPU time (user + system) used so far by every
// process of each component, by executable name.
func cpuSeconds() map[string]float64 {
	out := map[string]float64{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			continue
		}
		name := filepath.Base(exe)
		known := false
		for _, c := range components {
			known = known || name == c
		}
		if !known {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state is field 3, utime 14, stime 15.
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		out[name] += (u + s) / clockTick
	}
	return out
}

// cpuDelta formats the CPU used between two snapshots, largest first.
func cpuDelta(before, after map[string]float64) string {
	type kv struct {
		name string
		sec  float64
	}
	var rows []kv
	for name, s := range after {
		if d := s - before[name]; d >= 0.05 {
			rows = append(rows, kv{name, d})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].sec > rows[j].sec })
	parts := make([]string, len(rows))
	for i, r := range rows {
		parts[i] = fmt.Sprintf("%s %.1f s", r.name, r.sec)
	}
	return strings.Join(parts, ", ")
}

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat.
const clockTick = 100

// components are the processes whose CPU time the benchmark reports.
var components = []string{"vault", "etcd", "kube-apiserver", "ferry-broker", "ferry-writer", "spire-server", "spire-agent", "bench"}

// cpuSeconds returns the CPU time (user + system) used so far by every
// process of each component, by executable name. Only this process and its
// descendants count: other stacks on the same machine (tests of other
// checkouts) run the same executables.
func cpuSeconds() map[string]float64 {
	type proc struct {
		name      string
		ppid      int
		cpu       float64
		component bool
	}
	procs := map[int]proc{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		ppid, cpu, ok := readStat(pid)
		if !ok {
			continue
		}
		p := proc{ppid: ppid, cpu: cpu}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
			p.name = filepath.Base(exe)
			p.component = slices.Contains(components, p.name)
		}
		procs[pid] = p
	}
	self := os.Getpid()
	ours := func(pid int) bool {
		for range 64 { // a loop in the snapshot cannot hang us
			if pid == self {
				return true
			}
			p, ok := procs[pid]
			if !ok || pid <= 1 {
				return false
			}
			pid = p.ppid
		}
		return false
	}
	out := map[string]float64{}
	for pid, p := range procs {
		if p.component && ours(pid) {
			out[p.name] += p.cpu
		}
	}
	return out
}

// cpuTotal is the CPU time all components used between two snapshots.
func cpuTotal(before, after map[string]float64) float64 {
	t := 0.0
	for name, s := range after {
		t += max(s-before[name], 0)
	}
	return t
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

// readStat reads a process's parent and CPU time (user + system, seconds)
// from /proc/<pid>/stat; false if it is gone or unreadable.
func readStat(pid int) (ppid int, cpu float64, ok bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// Fields after the parenthesised command: state is field 3, ppid 4,
	// utime 14, stime 15.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return ppid, (u + s) / clockTick, true
}

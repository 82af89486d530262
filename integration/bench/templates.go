package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
)

// templatesPerCfg is how many bindings of the templates scenario share
// one "cfg" path.
const templatesPerCfg = 10

// templatesResult compares N templated two-source bindings with the same
// N bindings untemplated, on one stack.
type templatesResult struct {
	n, writers, reps int
	plain, tmpl      templatesRuns
}

// templatesRuns are one variant's repetitions.
type templatesRuns struct {
	took      []time.Duration // start until the watch saw every Secret
	brokerCPU []float64       // the broker's CPU seconds meanwhile
	brokerRSS []int64         // the broker's peak RSS at the end
	reads     int             // the broker's Vault reads of the bench paths in the last run
}

func (r templatesRuns) median() (time.Duration, float64, int64) {
	return median(r.took), median(r.brokerCPU), median(r.brokerRSS)
}

func cfgPath(k int) string { return fmt.Sprintf("%scfg/%04d", kvPrefix, k) }

// cfgData is the shared configuration of bindings 10k..10k+9.
func cfgData(k int) map[string]any {
	return map[string]any{"host": fmt.Sprintf("db-%d.bench.internal", k), "port": "5432", "database": "app", "options": "sslmode=verify-full&connect_timeout=5"}
}

// The templated variant's template: a DATABASE_URL from both sources and
// the own path's fields as one JSON document.
const (
	tmplDatabaseURL = `postgres://{{ .own.key0 | urlEscape }}:{{ .own.key1 | urlEscape }}@{{ .cfg.host }}:{{ .cfg.port }}/{{ .cfg.database }}?{{ .cfg.options }}`
	tmplConfigJSON  = `{{ toJson .own }}`
)

func templatedBinding(name, ns string, refresh time.Duration, i int) string {
	return fmt.Sprintf(`{name: %s, namespace: %s, refresh: %s, sources: [{name: cfg, kv: {mount: secret, path: %s}}, {name: own, kv: {mount: secret, path: %s}}], template: {data: {DATABASE_URL: %q, config.json: %q}}}`,
		name, ns, refresh, cfgPath(i/templatesPerCfg), kvPath(i), tmplDatabaseURL, tmplConfigJSON)
}

// templatedDigest is the digest of binding i's rendered Secret, computed
// here (not by Ferry's renderer) from what the bench wrote to Vault.
func templatedDigest(r *stack.Runner, i int) string {
	own := map[string]string{}
	for k, v := range payload(i, 0) {
		own[k] = v.(string)
	}
	cfg := cfgData(i / templatesPerCfg)
	js, err := json.Marshal(own)
	if err != nil {
		r.Fatalf("%v", err)
	}
	u := fmt.Sprintf("postgres://%s:%s@%s:%s/%s?%s", url.QueryEscape(own["key0"]), url.QueryEscape(own["key1"]), cfg["host"], cfg["port"], cfg["database"], cfg["options"])
	return digest(map[string][]byte{"DATABASE_URL": []byte(u), "config.json": js})
}

// templatesScenario: n bindings over o.writers writers, each with two KV
// sources (a "cfg" path shared by 10 bindings and its own ~1 KiB path)
// rendered by a template, against the same n bindings each with its own
// path alone and no template. One stack; the two broker configurations
// take turns, o.reps times each, on fresh Secrets.
func templatesScenario(rr *stack.Runner, o options, n int) templatesResult {
	e := newEnv(rr, n)
	for k := range (n + templatesPerCfg - 1) / templatesPerCfg {
		if _, err := e.vc.KVv2("secret").Put(context.Background(), cfgPath(k), cfgData(k)); err != nil {
			rr.Fatalf("vault put: %v", err)
		}
	}
	res := templatesResult{n: n, writers: o.writers, reps: o.reps}
	f := e.setupFerry(o.writers, o.refresh, o.writerKube, "create")
	plainCfg := f.brokerCfg
	// The templated configuration: the same file with each binding's
	// source and template in place of its one KV path (same writers,
	// namespaces and Secret names).
	var tb strings.Builder
	for _, line := range strings.Split(readFile(rr, plainCfg), "\n") {
		if strings.HasPrefix(line, "      - {name: s-") {
			var i int
			var ns string
			if _, err := fmt.Sscanf(line, "      - {name: s-%05d, namespace: %s", &i, &ns); err != nil {
				rr.Fatalf("templates: %q: %v", line, err)
			}
			line = "      - " + templatedBinding(secretName(i), strings.TrimSuffix(ns, ","), o.refresh, i)
		}
		tb.WriteString(line + "\n")
	}
	tmplCfg := ferrystack.WriteFile(rr, e.dir, "broker-templated.yaml", strings.TrimSuffix(tb.String(), "\n")+"\n")

	plainDigest := func(i int) string { return payloadDigest(i, 0) }
	tmplDigest := func(i int) string { return templatedDigest(rr, i) }
	for rep := range o.reps {
		for _, v := range []struct {
			name   string
			cfg    string
			digest func(int) string
			runs   *templatesRuns
		}{{"untemplated", plainCfg, plainDigest, &res.plain}, {"templated", tmplCfg, tmplDigest, &res.tmpl}} {
			e.deleteSecrets(f.namespaces()...)
			f.brokerCfg = v.cfg
			tr := newTracker()
			ctx, cancel := context.WithCancel(context.Background())
			reads0 := e.vaultReads()
			tr.start(ctx, e.kc)
			cpu0 := cpuSeconds()
			start := time.Now()
			for i := range n {
				tr.expect(writerNS(i%o.writers)+"/"+secretName(i), v.digest(i), start)
			}
			logf("templates N=%d: %s (%d/%d)", n, v.name, rep+1, o.reps)
			f.start()
			if !tr.wait(10 * time.Minute) {
				rr.Fatalf("templates N=%d: %s: Ferry did not deliver every Secret within 10 minutes", n, v.name)
			}
			took := time.Since(start)
			cpu := cpuSeconds()["ferry-broker"] - cpu0["ferry-broker"]
			rss, _ := f.broker.PeakRSS()
			cancel()
			v.runs.reads = e.vaultReads() - reads0
			logf("templates N=%d: %s took %v, broker CPU %.2f s, peak RSS %s", n, v.name, took, cpu, mib(rss))
			v.runs.took = append(v.runs.took, took)
			v.runs.brokerCPU = append(v.runs.brokerCPU, cpu)
			v.runs.brokerRSS = append(v.runs.brokerRSS, rss)
			f.stop()
		}
	}
	return res
}

// markdown writes the section of the templates scenario.
func (t *templatesResult) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "\n## Templates: %d templated two-source Secrets next to the same %d untemplated\n\n", t.n, t.n)
	fmt.Fprintf(b, "One stack, %d writers. **Untemplated**: each binding reads its own KV v2 path (8 keys × 128 characters, ~1 KiB) into its Secret as it is. **Templated**: each binding has two KV sources, a `cfg` path shared by %d bindings (host, port, database, options) and the same own path, rendered into two keys (~1.4 KiB):\n\n", t.writers, templatesPerCfg)
	fmt.Fprintf(b, "```yaml\nsources: [{name: cfg, kv: {mount: secret, path: bench/cfg/NNNN}}, {name: own, kv: {mount: secret, path: bench/NNNNN}}]\ntemplate:\n  data:\n    DATABASE_URL: %q\n    config.json: %q\n```\n\n", tmplDatabaseURL, tmplConfigJSON)
	fmt.Fprintf(b, "The two broker configurations take turns, %d times each, on fresh Secrets (broker and writers restarted each time); the clock runs from starting the broker until a watch on the apiserver has seen every Secret with the expected data (computed by the bench, not by Ferry's renderer). Broker CPU is the broker process's user + system time over the same span; RSS its peak; Vault reads the broker's reads of the bench's KV paths in Vault's audit log. Medians, then every run.\n\n", t.reps)
	fmt.Fprintf(b, "| variant | Vault paths | Vault reads (last run) | time to all applied | broker CPU | broker peak RSS | runs: time / CPU |\n|---|---:|---:|---:|---:|---:|---|\n")
	pt, pc, pr := t.plain.median()
	tt, tc, trss := t.tmpl.median()
	cpus := func(c []float64) string {
		s := make([]string, len(c))
		for i, v := range c {
			s[i] = fmt.Sprintf("%.2f", v)
		}
		return strings.Join(s, ", ")
	}
	fmt.Fprintf(b, "| untemplated | %d | %d | %.2f s | %.2f s | %s | %s / %s |\n", t.n, t.plain.reads, pt.Seconds(), pc, mib(pr), seconds(t.plain.took), cpus(t.plain.brokerCPU))
	fmt.Fprintf(b, "| templated (2 sources) | %d + %d | %d | %.2f s | %.2f s | %s | %s / %s |\n", t.n, (t.n+templatesPerCfg-1)/templatesPerCfg, t.tmpl.reads, tt.Seconds(), tc, mib(trss), seconds(t.tmpl.took), cpus(t.tmpl.brokerCPU))
	fmt.Fprintf(b, "| **templated ÷ untemplated** | | | **%.2f** | **%.2f** | **%.2f** | |\n", tt.Seconds()/pt.Seconds(), tc/pc, float64(trss)/float64(pr))
}

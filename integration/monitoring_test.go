package integration

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/ferry-secrets/ferry/integration/ferrystack"
	"github.com/ferry-secrets/ferry/integration/stack"
)

// The monitoring files, relative to this package. rulesFile is the source;
// chartRulesFile is the chart's copy (helm cannot read files outside the
// chart).
const (
	rulesFile      = "../deploy/monitoring/rules.yaml"
	rulesTestFile  = "../deploy/monitoring/rules_test.yaml"
	dashboardFile  = "../deploy/monitoring/dashboard.json"
	chartRulesFile = chartDir + "/files/rules.yaml"
)

// ruleGroups is the part of a Prometheus rule file the tests look at.
type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert string `json:"alert"`
			Expr  string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

func readYAML(t *testing.T, path string, into any) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return raw
}

// TestAlertRules lints Ferry's alerting rules with promtool, runs their unit
// tests, checks that every alert has a firing and a not-firing test case,
// and that the writer chart's PrometheusRule renders exactly these groups.
func TestAlertRules(t *testing.T) {
	var rules ruleGroups
	readYAML(t, rulesFile, &rules)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
		}
	}
	if len(alerts) < 6 {
		t.Fatalf("%s holds %d alerts: %v", rulesFile, len(alerts), alerts)
	}

	t.Run("promtool check rules", func(t *testing.T) {
		out, err := exec.Command(stack.Bin(t, "promtool"), "check", "rules", rulesFile).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool check rules: %v\n%s", err, out)
		}
		if want := "SUCCESS: " + strconv.Itoa(len(alerts)) + " rules found"; !strings.Contains(string(out), want) {
			t.Errorf("promtool check rules did not report %q:\n%s", want, out)
		}
	})

	t.Run("promtool test rules", func(t *testing.T) {
		out, err := exec.Command(stack.Bin(t, "promtool"), "test", "rules", rulesTestFile).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool test rules: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "SUCCESS") {
			t.Errorf("promtool test rules:\n%s", out)
		}
	})

	t.Run("every alert has a firing and a not-firing case", func(t *testing.T) {
		var tests struct {
			Tests []struct {
				AlertRuleTest []struct {
					Alertname string `json:"alertname"`
					ExpAlerts []any  `json:"exp_alerts"`
				} `json:"alert_rule_test"`
			} `json:"tests"`
		}
		raw, err := os.ReadFile(rulesTestFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, &tests); err != nil {
			t.Fatal(err)
		}
		fires, quiet := map[string]bool{}, map[string]bool{}
		for _, tc := range tests.Tests {
			for _, a := range tc.AlertRuleTest {
				if !slices.Contains(alerts, a.Alertname) {
					t.Errorf("%s tests %s, which %s does not define", rulesTestFile, a.Alertname, rulesFile)
				}
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
		}
		for _, a := range alerts {
			if !fires[a] || !quiet[a] {
				t.Errorf("alert %s: firing case %v, not-firing case %v; want both in %s", a, fires[a], quiet[a], rulesTestFile)
			}
		}
	})

	t.Run("the chart's copy is identical", func(t *testing.T) {
		src, err := os.ReadFile(rulesFile)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := os.ReadFile(chartRulesFile)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(src, cp) {
			t.Fatalf("%s differs from %s: cp deploy/monitoring/rules.yaml deploy/helm/ferry-writer/files/rules.yaml", chartRulesFile, rulesFile)
		}
	})

	t.Run("the chart's PrometheusRule renders the same groups, off by default", func(t *testing.T) {
		if prs := prometheusRules(renderChart(t, "ferry-system", chartBaseValues)); len(prs) != 0 {
			t.Fatalf("a PrometheusRule rendered by default: %v", prs)
		}
		r := renderChart(t, "ferry-system", chartBaseValues+"metrics: {prometheusRule: {enabled: true, labels: {release: kube-prometheus}}}\n")
		prs := prometheusRules(r)
		if len(prs) != 1 {
			t.Fatalf("%d PrometheusRules rendered, want 1", len(prs))
		}
		pr := prs[0]
		if pr.GetNamespace() != "ferry-system" || pr.GetLabels()["release"] != "kube-prometheus" || pr.GetLabels()["app.kubernetes.io/name"] != "ferry-writer" {
			t.Errorf("PrometheusRule metadata: namespace %q, labels %v", pr.GetNamespace(), pr.GetLabels())
		}
		var want map[string]any
		readYAML(t, rulesFile, &want)
		got, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups")
		if !reflect.DeepEqual(got, want["groups"]) {
			t.Errorf("the PrometheusRule's groups differ from %s:\n got %v\nwant %v", rulesFile, got, want["groups"])
		}
		if spec, _, _ := unstructured.NestedMap(pr.Object, "spec"); len(spec) != 1 {
			t.Errorf("PrometheusRule spec holds more than groups: %v", slices.Collect(maps.Keys(spec)))
		}
		bad := chartBaseValues + "metrics: {prometheusRule: {enabled: true, ruleSelector: x}}\n"
		if out, err := ferrystack.Helm(t, "template", "ferry", chartDir, "-f", valuesFile(t, bad)); err == nil {
			t.Errorf("an unknown metrics.prometheusRule key was accepted:\n%s", out)
		}
	})

	t.Run("rules and dashboard use only Ferry's metric names", func(t *testing.T) {
		// That each is exported by a real scrape: TestMetrics (metrics_test.go).
		for _, path := range monitoringFiles {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			names := monitoringNames(raw)
			if len(names) < 10 {
				t.Errorf("%s uses only %d metrics: %v", path, len(names), names)
			}
			for _, n := range names {
				if !slices.ContainsFunc(ferryMetricPrefixes, func(p string) bool { return strings.HasPrefix(n, p) }) {
					t.Errorf("%s uses %s, not a Ferry metric", path, n)
				}
			}
		}
	})
}

// TestDashboard checks the Grafana dashboard's shape: every panel queries
// Prometheus through the dashboard's data source variable, panel IDs are
// unique, panels fit the 24-column grid, and the queries use Ferry's metric
// names. (That each name is exported by a real scrape is checked where the
// metrics are scraped.)
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type, UID string
			} `json:"datasource"`
			GridPos struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard title %q, uid %q", d.Title, d.UID)
	}
	hasDS := slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type string }) bool {
		return v.Name == "datasource" && v.Type == "datasource"
	})
	if !hasDS {
		t.Error("no datasource template variable")
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X < 0 || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			if len(monitoringNames([]byte(tg.Expr))) == 0 {
				t.Errorf("panel %q: query %q uses no Ferry metric", p.Title, tg.Expr)
			}
		}
	}
	if queries < 20 {
		t.Errorf("only %d queries", queries)
	}
}

// prometheusRules returns the rendered PrometheusRules.
func prometheusRules(r rendered) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, u := range ofType[*unstructured.Unstructured](r) {
		if u.GetKind() == "PrometheusRule" {
			out = append(out, u)
		}
	}
	return out
}

// ferryMetricPrefixes are the namespaces of the metrics Ferry exports.
var ferryMetricPrefixes = []string{"ferry_broker_", "ferry_writer_", "ferry_build_info", "grpc_server_", "grpc_client_"}

package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-secrets/ferry/broker/config"
)

// The broker's deployment beside Vault, relative to this package.
const (
	brokerUnitFile    = "../deploy/broker/ferry-broker.service"
	brokerExampleFile = "../deploy/broker/broker.example.yaml"
)

// unitDirectives parses a systemd unit into section.key → values (a key may
// repeat; an empty assignment resets the list, as systemd reads it, but is
// kept as "" so that "set to empty" can be checked).
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not key=value: %q", path, line)
			}
			k = section + "." + k
			if v == "" {
				out[k] = []string{""}
			} else {
				out[k] = append(out[k], v)
			}
		}
	}
	return out
}

// TestBrokerDeployment checks deploy/broker: the systemd unit carries the
// hardening the README promises and passes `systemd-analyze verify`, its
// exposure score stays low, and the example config passes `ferry-broker
// validate` with the paths the unit provides.
func TestBrokerDeployment(t *testing.T) {
	unit := unitDirectives(t, brokerUnitFile)
	brokerBin, _ := ferryBinaries(t)

	t.Run("the unit is hardened", func(t *testing.T) {
		for key, want := range map[string]string{
			"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
			"CapabilityBoundingSet": "", "AmbientCapabilities": "", "PrivateTmp": "yes", "PrivateDevices": "yes",
			"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
			"ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
			"SystemCallArchitectures": "native", "RestrictSUIDSGID": "yes", "MemoryDenyWriteExecute": "yes",
			"ConfigurationDirectory": "ferry", "LogsDirectory": "ferry", "UMask": "0077",
			"ExecReload": "/bin/kill -HUP $MAINPID",
		} {
			if got := unit["Service."+key]; len(got) != 1 || got[0] != want {
				t.Errorf("%s=%q, want exactly %q", key, got, want)
			}
		}
		if got := unit["Service.SystemCallFilter"]; strings.Join(got, " ") != "@system-service ~@privileged" {
			t.Errorf("SystemCallFilter=%q, want @system-service then ~@privileged", got)
		}
		// Writable paths: only the log directory (systemd adds it to the
		// writable set); no ReadWritePaths, no StateDirectory (state lives in Vault).
		for _, key := range []string{"ReadWritePaths", "StateDirectory", "CacheDirectory", "RuntimeDirectory"} {
			if _, ok := unit["Service."+key]; ok {
				t.Errorf("the unit sets %s", key)
			}
		}
		if got := unit["Service.User"]; len(got) != 1 || got[0] != "ferry-broker" {
			t.Errorf("User=%q, want ferry-broker (a dynamic user)", got)
		}
	})

	t.Run("the example config passes ferry-broker validate with the unit's paths", func(t *testing.T) {
		raw, err := os.ReadFile(brokerExampleFile)
		if err != nil {
			t.Fatal(err)
		}
		// The unit runs `-config /etc/ferry/broker.yaml` (its ConfigurationDirectory)
		// and may write only below /var/log/ferry (its LogsDirectory).
		exec0 := strings.Join(unit["Service.ExecStart"], "")
		if !strings.HasSuffix(exec0, " -config /etc/ferry/broker.yaml") || !strings.HasPrefix(exec0, "/usr/local/bin/ferry-broker ") {
			t.Errorf("ExecStart=%q", exec0)
		}
		var cfg struct {
			Audit config.Audit `json:"audit"`
		}
		readYAML(t, brokerExampleFile, &cfg)
		if filepath.Dir(cfg.Audit.File) != "/var/log/ferry" {
			t.Errorf("audit.file %q is not in the unit's LogsDirectory /var/log/ferry", cfg.Audit.File)
		}
		// Validation checks that vault.ca_file exists: give /etc/ferry a home here.
		etc := t.TempDir()
		if err := os.WriteFile(filepath.Join(etc, "vault-ca.pem"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		cfgFile := filepath.Join(t.TempDir(), "broker.yaml")
		if err := os.WriteFile(cfgFile, []byte(strings.ReplaceAll(string(raw), "/etc/ferry/", etc+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(brokerBin, "validate", "-config", cfgFile).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "valid (1 writers)") {
			t.Fatalf("ferry-broker validate: %v\n%s", err, out)
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		analyze := systemdAnalyze(t)
		// verify checks that ExecStart's binary exists: point it at the one just built.
		dir := t.TempDir()
		tmpUnit := filepath.Join(dir, "ferry-broker.service")
		raw, err := os.ReadFile(brokerUnitFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tmpUnit, []byte(strings.ReplaceAll(string(raw), "/usr/local/bin/ferry-broker", brokerBin)), 0o644); err != nil {
			t.Fatal(err)
		}
		// Warnings (an unknown or misspelt key) exit 0 but print: any output fails.
		out, err := exec.Command(analyze, "verify", tmpUnit).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
		out, err = exec.Command(analyze, "security", "--offline=yes", tmpUnit).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security: %v\n%s", err, out)
		}
		m := exposure.FindSubmatch(out)
		if m == nil {
			t.Fatalf("no overall exposure level in:\n%s", out)
		}
		level, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("systemd-analyze security: overall exposure %.1f (0 = fully locked down, 10 = unprotected)", level)
		if level > 2.0 {
			t.Errorf("exposure level %.1f, want at most 2.0:\n%s", level, out)
		}
	})
}

var exposure = regexp.MustCompile(`Overall exposure level for ferry-broker\.service: ([0-9.]+)`)

// systemdAnalyze returns the path of systemd-analyze, or skips: it comes with
// Debian's systemd package, which a minimal container may lack.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd): the unit is checked by the other subtests only")
	}
	return p
}

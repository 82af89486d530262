// Package writer runs ferry-writer: it proves its identity with an
// X.509-SVID, holds a gRPC mTLS stream to ferry-broker, and writes the
// Secrets the broker streams into its target namespaces, using a typed
// Kubernetes client that only creates and patches Secrets (apply mode) or
// creates and replaces them (update mode, which needs the chart's admission
// policy and checks it at start).
//
// The writer links no Vault client and never reads Secrets back from the
// Kubernetes API. Its subpackages are config (the YAML configuration), apply
// (the Secret applier, with creation and deletion policies and periodic
// resync), restart (rollout restarts through pod template annotations) and
// stream (the broker client loop).
package writer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferry-secrets/ferry/internal/buildinfo"
	"github.com/ferry-secrets/ferry/internal/metrics"
	"github.com/ferry-secrets/ferry/internal/svidsource"
	"github.com/ferry-secrets/ferry/internal/task"
	ferryv1 "github.com/ferry-secrets/ferry/proto/ferry/v1"
	"github.com/ferry-secrets/ferry/writer/apply"
	"github.com/ferry-secrets/ferry/writer/config"
	writermetrics "github.com/ferry-secrets/ferry/writer/metrics"
	"github.com/ferry-secrets/ferry/writer/restart"
	"github.com/ferry-secrets/ferry/writer/stream"
)

// UserAgent is the writer's Kubernetes client user agent.
const UserAgent = "ferry-writer"

// Run runs the writer until ctx ends, then returns nil; it returns an error
// if cfg is invalid or the writer cannot start.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	brokerID, err := spiffeid.FromString(cfg.Broker.SPIFFEID)
	if err != nil {
		return fmt.Errorf("writer: broker.spiffe_id: %w", err)
	}
	// Metrics and probes answer from the start (not ready until the stream
	// is open and its snapshot applied).
	reg := metrics.NewRegistry()
	m := writermetrics.New(reg)
	var probes metrics.Probes
	msrv, err := metrics.Start(cfg.Metrics, reg, &probes, log)
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	defer msrv.Stop()

	restCfg, err := restConfig(cfg.Kubernetes, log)
	if err != nil {
		return err
	}
	m.KubeClient()
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("writer: kubernetes client: %w", err)
	}

	log.Info("ferry-writer starting", "version", buildinfo.Get().Version, "commit", buildinfo.Get().Commit, "broker", cfg.BrokerAddresses(), "broker_id", brokerID.String(),
		"namespaces", cfg.Namespaces, "parallelism", cfg.Kubernetes.Parallelism, "resync", cfg.Resync.Duration.String(),
		"deletion_enabled", cfg.Deletion.Enabled, "rollout_restart_targets", len(cfg.RolloutRestart.Targets),
		"qps", cfg.Kubernetes.QPS, "burst", cfg.Kubernetes.Burst, "api_server", restCfg.Host, "write", cfg.Kubernetes.Write, "content_type", restCfg.ContentType,
		"secret_types", cfg.SecretTypes, "creation_policies", cfg.CreationPolicies)
	// The admission policy check (apiserver round trips) and the first SVID
	// (the Workload API) do not depend on each other: both run at once, and
	// the writer goes on (and so writes anything) only once both succeeded.
	// The first failure ends the other's wait and is the one reported.
	startCtx, cancelStart := context.WithCancel(ctx)
	defer cancelStart()
	var (
		failed   error
		failOnce sync.Once
	)
	fail := func(err error) {
		failOnce.Do(func() { failed = err; cancelStart() })
	}
	checked := make(chan struct{})
	var owner string // update mode: the writer's Kubernetes user name
	go func() {
		defer close(checked)
		var err error
		if owner, err = checkPolicy(startCtx, cfg, kube, log); err != nil {
			fail(err)
		}
	}()
	src, err := svidsource.New(startCtx, cfg.SPIFFE, log)
	if err != nil {
		fail(fmt.Errorf("writer: %w", err))
	} else {
		defer src.Close()
	}
	<-checked
	if ctx.Err() != nil {
		return nil // stopped while starting: not a failure
	}
	if failed != nil {
		return failed
	}
	if svid, err := src.GetX509SVID(); err == nil {
		log.Info("SVID loaded", "spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter)
	}

	opts := []apply.Option{
		apply.WithLogger(log),
		apply.WithMetrics(m),
		apply.WithSecretTypes(cfg.SecretTypes),
		apply.WithCreationPolicies(creationPolicies(cfg.CreationPolicies)...),
	}
	if cfg.Deletion.Enabled {
		opts = append(opts, apply.WithDelete())
	}
	if cfg.Kubernetes.Write == config.WriteUpdate {
		opts = append(opts, apply.WithUpdate(), apply.WithOwner(owner))
	}
	var targets []restart.Workload
	for _, w := range cfg.RolloutRestart.Targets {
		targets = append(targets, restart.Workload{Namespace: w.Namespace, Kind: w.Kind, Name: w.Name})
	}
	restarter := restart.New(kube.AppsV1(), targets, cfg.RolloutRestart.Delay.Duration, m, log)
	if len(targets) > 0 {
		opts = append(opts, apply.WithRestarter(restarter))
	}
	applier := apply.New(kube.CoreV1(), cfg.Namespaces, opts...)
	addrs := cfg.BrokerAddresses()
	client, err := stream.New(stream.Options{
		Target:        addrs[0],
		Fallbacks:     addrs[1:],
		DialOptions:   append(stream.DialOptions(src, src, brokerID), m.DialOptions()...),
		Applier:       applier,
		Parallelism:   cfg.Kubernetes.Parallelism,
		WriterVersion: buildinfo.Get().Version,
		Log:           log,
		Metrics:       m,
	})
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	m.Gauges(applier.Held, client.Connected)
	probes.Live("applier", func() error { applier.Held(); return nil })
	probes.Ready(client.Ready)
	// The stream returns only when ctx ends (or it cannot start); resync,
	// retries of failed applies and restarts run beside it.
	err = task.Run(ctx, client.Run, restarter.Run, func(ctx context.Context) error {
		return applier.RunResync(ctx, cfg.Resync.Duration, cfg.Kubernetes.Parallelism)
	}, func(ctx context.Context) error {
		return applier.RunRetries(ctx, cfg.Kubernetes.Parallelism)
	})
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	return nil
}

// checkPolicy, in update mode, shows that the admission policy holds the
// writer's credentials in every target namespace (apply.CheckPolicy), and
// returns the writer's Kubernetes user name, which the policy wants on
// every Secret it writes (apply.AnnotationWriter). Update mode replaces
// Secrets with unconditional PUTs: safe only while the policy decides which
// Secrets are this writer's. Without it the writer refuses to start (the
// pod restarts and checks again, e.g. once a fresh install's policy is in
// effect).
func checkPolicy(ctx context.Context, cfg config.Config, kube kubernetes.Interface, log *slog.Logger) (owner string, _ error) {
	if cfg.Kubernetes.Write != config.WriteUpdate {
		return "", nil
	}
	owner, err := apply.WhoAmI(ctx, kube.AuthenticationV1())
	if err != nil {
		return "", fmt.Errorf("writer: %w", err)
	}
	denials, err := apply.CheckPolicy(ctx, kube.CoreV1(), cfg.Namespaces)
	if err != nil {
		return "", fmt.Errorf("writer: %w", err)
	}
	for ns, msg := range denials {
		log.Info("admission policy in effect (a dry-run create of an unlabelled Secret was refused)", "namespace", ns, "denial", msg)
	}
	log.Info("update mode: Secrets are annotated with this writer's Kubernetes user", "annotation", apply.AnnotationWriter, "user", owner)
	return owner, nil
}

// creationPolicies maps creation_policies (validated) to the protocol's.
func creationPolicies(names []string) []ferryv1.CreationPolicy {
	out := make([]ferryv1.CreationPolicy, 0, len(names))
	for _, n := range names {
		if p, ok := ferryv1.ParseCreationPolicy(n); ok { // validated with the config
			out = append(out, p)
		}
	}
	return out
}

// The encoding of the writer's Kubernetes requests, in this one place: the
// bodies of creates, updates (update mode), deletes and dry-runs, and the
// responses the writer accepts. Patches are unaffected: client-go sends a
// server-side apply, a merge patch or a JSON patch in its own content type.
const (
	requestContentType   = runtime.ContentTypeProtobuf
	responseContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
)

// restConfig returns the Kubernetes client config: from the kubeconfig file
// if one is set, otherwise in-cluster; with the configured QPS and burst,
// protobuf responses and the writer's user agent. A kubeconfig that skips
// TLS verification or names an http:// server is refused unless
// kubernetes.allow_insecure is set, and then logged as a warning: Secret
// data (and, over TLS, the writer's token) would go to a server that
// proves nothing, or cross the network in clear text.
func restConfig(k config.Kubernetes, log *slog.Logger) (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if k.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			err = fmt.Errorf("%w; set kubernetes.kubeconfig to run outside a cluster", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("writer: kubernetes config: %w", err)
	}
	if k.Kubeconfig != "" {
		problems, err := insecureTransport(rc)
		if err != nil {
			return nil, fmt.Errorf("writer: kubeconfig %s: %w", k.Kubeconfig, err)
		}
		if len(problems) > 0 {
			if !k.AllowInsecure {
				return nil, fmt.Errorf("writer: kubeconfig %s: %s; refused unless kubernetes.allow_insecure is true (development only)", k.Kubeconfig, strings.Join(problems, "; "))
			}
			log.Warn("kubernetes.allow_insecure: using an insecure kubeconfig; development only", "kubeconfig", k.Kubeconfig, "problems", problems)
		}
	}
	rc.QPS = k.QPS
	rc.Burst = k.Burst
	rc.UserAgent = UserAgent
	rc.ContentType, rc.AcceptContentTypes = requestContentType, responseContentTypes
	return rc, nil
}

// insecureTransport lists what makes rc's connection to the apiserver
// insecure: no verification of its certificate, or no TLS at all (an
// http:// server, or a bare host:port without TLS settings, which
// client-go reaches over http).
func insecureTransport(rc *rest.Config) ([]string, error) {
	var problems []string
	if rc.Insecure {
		problems = append(problems, "insecure-skip-tls-verify is set (the apiserver's certificate would not be verified)")
	}
	u, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "https" {
		problems = append(problems, fmt.Sprintf("server %s is not https (Secret data would cross the network in clear text, to a server that proves nothing)", u.Redacted()))
	}
	return problems, nil
}

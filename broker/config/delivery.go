package config

import (
	"fmt"

	"github.com/ferry-secrets/ferry/internal/yamlconfig"
)

// Creation policies: what the writer does with a Secret of the same name
// that exists before Ferry first writes it.
const (
	// CreationCreate (default) creates the Secret and owns it; an existing
	// Secret that Ferry did not create is left alone and reported.
	CreationCreate = "create"
	// CreationMerge merges Ferry's keys into an existing Secret and owns only
	// those keys; it never creates the Secret.
	CreationMerge = "merge"
	// CreationTakeover creates the Secret or forces Ferry's content onto an
	// existing one.
	CreationTakeover = "takeover"
)

// Deletion policies: what the writer does when the binding is removed from
// the broker's configuration.
const (
	// DeletionRetain (default) leaves the Secret as it is.
	DeletionRetain = "retain"
	// DeletionDelete deletes the Secret (for a merged binding, only Ferry's
	// keys are removed).
	DeletionDelete = "delete"
)

// WorkloadRef names a workload in the binding's namespace whose pods are
// restarted (through a pod template annotation) when the Secret changes.
type WorkloadRef struct {
	// Kind is Deployment, StatefulSet or DaemonSet.
	Kind string `json:"kind"`
	// Name is the workload's name.
	Name string `json:"name"`
}

// CreationPolicy returns b.Creation or its default.
func (b Binding) CreationPolicy() string {
	if b.Creation == "" {
		return CreationCreate
	}
	return b.Creation
}

// DeletionPolicy returns b.Deletion or its default.
func (b Binding) DeletionPolicy() string {
	if b.Deletion == "" {
		return DeletionRetain
	}
	return b.Deletion
}

// validateDelivery checks the binding's creation and deletion policies and
// rollout restart targets.
func (b Binding) validateDelivery(p *yamlconfig.Problems, f string) {
	switch b.Creation {
	case "", CreationCreate, CreationMerge, CreationTakeover:
	default:
		p.Add(f+".creation", "%q is not one of create, merge, takeover", b.Creation)
	}
	switch b.Deletion {
	case "", DeletionRetain, DeletionDelete:
	default:
		p.Add(f+".deletion", "%q is not one of retain, delete", b.Deletion)
	}
	seen := map[WorkloadRef]int{}
	for i, w := range b.RolloutRestart {
		wf := fmt.Sprintf("%s.rollout_restart[%d]", f, i)
		switch w.Kind {
		case "Deployment", "StatefulSet", "DaemonSet":
		default:
			p.Add(wf+".kind", "%q is not one of Deployment, StatefulSet, DaemonSet", w.Kind)
		}
		if w.Name == "" || len(w.Name) > 253 || !dnsSubdomain.MatchString(w.Name) {
			p.Add(wf+".name", "%q is not a valid workload name", w.Name)
		}
		if j, dup := seen[w]; dup {
			p.Add(wf, "%s %s is already listed at rollout_restart[%d]", w.Kind, w.Name, j)
		} else {
			seen[w] = i
		}
	}
}

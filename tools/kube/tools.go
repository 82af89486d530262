//go:build tools

// Package kube pins kube-apiserver and kubectl for Ferry's integration tests.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

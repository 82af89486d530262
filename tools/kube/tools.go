//go:build tools

// Package kube pins kube-apiserver, kube-controller-manager (its token
// controller only, for the privilege tests) and kubectl for Ferry's
// integration tests.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

//go:build tools

// Package prom pins promtool, which lints and unit-tests Ferry's alerting rules.
package prom

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)

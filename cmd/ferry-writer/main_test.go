package main

import (
	"testing"

	"github.com/ferry-secrets/ferry/internal/command/commandtest"
)

func TestMain(m *testing.M) { commandtest.Main(m, main) }

func TestCommandLine(t *testing.T) { commandtest.CheckCommandLine(t, "ferry-writer") }

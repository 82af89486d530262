package stack

import "syscall"

// Signal sends sig to the process (not its group), e.g. SIGHUP to make
// ferry-broker reload its configuration.
func (p *Process) Signal(sig syscall.Signal) error {
	return p.p.cmd.Process.Signal(sig)
}

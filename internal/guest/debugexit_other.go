//go:build !(linux && amd64)

package guest

import "errors"

// DebugExit reports code through QEMU's isa-debug-exit device; only
// linux/amd64 guests have it.
func DebugExit(code int) error { return errors.New("isa-debug-exit: only on linux/amd64") }

//go:build linux && !amd64

package main

import "errors"

func debugExit(code int) error { return errors.New("isa-debug-exit is only wired up on amd64") }

package state

import (
	"sync"
	"testing"
	"time"
)

// A store that held its network's lock adds one to the state directory's
// generation when it lets go; one that never locked does not. Concurrent
// releases of different networks' locks count every one.
func TestGeneration(t *testing.T) {
	base := t.TempDir()
	if g := Generation(base); g != 0 {
		t.Fatalf("fresh directory: generation %d, want 0", g)
	}
	s, err := Open(base, "a")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if g := Generation(base); g != 0 {
		t.Fatalf("a store that never locked changed the generation to %d", g)
	}
	var wg sync.WaitGroup
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(base, n)
			if err != nil {
				t.Error(err)
				return
			}
			if err := s.Lock(10 * time.Second); err != nil {
				t.Error(err)
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	if g := Generation(base); g != 8 {
		t.Fatalf("after 8 locked commands: generation %d, want 8", g)
	}
}

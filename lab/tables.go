package lab

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/kvmnet/kvmnet/internal/nft"
)

// tableStore keeps, in the network's state directory, the nftables tables
// kvmnet last wrote in each namespace (nft/<namespace>.json), so that a
// rollback can rebuild a table an edit replaced.
type tableStore struct{ dir string }

func (s tableStore) path(ns string) string { return filepath.Join(s.dir, ns+".json") }

func (s tableStore) Load(ns string) (nft.Table, bool) {
	var t nft.Table
	b, err := os.ReadFile(s.path(ns))
	if err != nil || json.Unmarshal(b, &t) != nil {
		return t, false
	}
	return t, true
}

func (s tableStore) Save(ns string, t nft.Table) error {
	if t.IsEmpty() {
		err := os.Remove(s.path(ns))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return os.WriteFile(s.path(ns), b, 0o644)
}

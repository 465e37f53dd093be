package vm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SeedLabel is the volume label cloud-init's NoCloud data source looks for.
const SeedLabel = "cidata"

// seedTime stamps the seed's records: a fixed time keeps the image
// byte-for-byte reproducible.
var seedTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// yq quotes s as a YAML double-quoted scalar (JSON strings are valid YAML).
func yq(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// SeedFiles returns the NoCloud seed's files for an image VM: meta-data
// (instance id, host name), user-data (#cloud-config: host name, the user
// with the SSH keys, no password logins, then ExtraUserData) and
// network-config (version 2, one ethernet per NIC matched by MAC: dhcp4, or
// the static address, default route and DNS servers).
func SeedFiles(s Spec) map[string]string {
	s = s.WithDefaults()
	ci := s.Boot.CloudInit
	if ci == nil {
		ci = &CloudInit{Hostname: s.Name, User: "kvmnet"}
	}
	// The instance id changes when the seed's content does, so cloud-init
	// applies a changed configuration on the next boot.
	h := sha256.New()
	var md, ud, nc strings.Builder

	fmt.Fprintf(&ud, "#cloud-config\nhostname: %s\nfqdn: %s\nmanage_etc_hosts: true\n", yq(ci.Hostname), yq(ci.Hostname))
	fmt.Fprintf(&ud, "users:\n  - name: %s\n    shell: /bin/bash\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    lock_passwd: true\n", yq(ci.User))
	if len(ci.SSHKeys) > 0 {
		ud.WriteString("    ssh_authorized_keys:\n")
		for _, k := range ci.SSHKeys {
			fmt.Fprintf(&ud, "      - %s\n", yq(strings.TrimSpace(k)))
		}
	}
	ud.WriteString("ssh_pwauth: false\n")
	if ci.ExtraUserData != "" {
		ud.WriteString(strings.TrimRight(ci.ExtraUserData, "\n") + "\n")
	}

	nc.WriteString("version: 2\nethernets:\n")
	for i, n := range s.NICs {
		fmt.Fprintf(&nc, "  nic%d:\n    match:\n      macaddress: %s\n    set-name: %s\n", i, yq(n.MAC), yq(fmt.Sprintf("eth%d", i)))
		if n.DHCP {
			nc.WriteString("    dhcp4: true\n")
		} else if n.Address.IsValid() {
			fmt.Fprintf(&nc, "    dhcp4: false\n    addresses: [%s]\n", yq(n.Address.String()))
			if n.Gateway.IsValid() {
				fmt.Fprintf(&nc, "    routes:\n      - to: default\n        via: %s\n", yq(n.Gateway.String()))
			}
		}
		if len(n.DNS) > 0 {
			var d []string
			for _, a := range n.DNS {
				d = append(d, yq(a.String()))
			}
			fmt.Fprintf(&nc, "    nameservers:\n      addresses: [%s]\n", strings.Join(d, ", "))
		}
	}
	h.Write([]byte(ud.String() + nc.String()))
	fmt.Fprintf(&md, "instance-id: %s\nlocal-hostname: %s\n", yq("kvmnet-"+s.Name+"-"+hex.EncodeToString(h.Sum(nil))[:12]), yq(ci.Hostname))
	return map[string]string{"meta-data": md.String(), "user-data": ud.String(), "network-config": nc.String()}
}

// WriteSeed writes s's NoCloud seed to path as an ISO 9660 image labelled
// "cidata" (atomically).
func WriteSeed(path string, s Spec) error {
	var files []isoFile
	for name, data := range SeedFiles(s) {
		files = append(files, isoFile{Name: name, Data: []byte(data)})
	}
	var buf bytes.Buffer
	if err := writeISO(&buf, SeedLabel, files, seedTime); err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path))
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	return nil
}

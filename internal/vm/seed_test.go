package vm

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func seedSpec() Spec {
	return Spec{
		Name: "web1",
		NICs: []NIC{
			{Namespace: "web1", Uplink: "eth0", MAC: "52:54:00:AB:00:01", DHCP: true},
			{Namespace: "web1", Uplink: "eth1", MAC: "52:54:00:ab:00:02", Address: netip.MustParsePrefix("10.0.0.5/24"),
				Gateway: netip.MustParseAddr("10.0.0.1"), DNS: []netip.Addr{netip.MustParseAddr("10.0.0.53")}},
		},
		Boot: Boot{Image: "/img/debian.qcow2", CloudInit: &CloudInit{
			SSHKeys:       []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmnet test@host"},
			ExtraUserData: "packages: [nginx]",
		}},
	}
}

func TestSeedFiles(t *testing.T) {
	f := SeedFiles(seedSpec())
	if !strings.HasPrefix(f["meta-data"], `instance-id: "kvmnet-web1-`) || !strings.Contains(f["meta-data"], "local-hostname: \"web1\"\n") {
		t.Errorf("meta-data:\n%s", f["meta-data"])
	}
	wantUD := `#cloud-config
hostname: "web1"
fqdn: "web1"
manage_etc_hosts: true
users:
  - name: "kvmnet"
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: true
    ssh_authorized_keys:
      - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmnet test@host"
ssh_pwauth: false
packages: [nginx]
`
	if f["user-data"] != wantUD {
		t.Errorf("user-data:\n%s\nwant:\n%s", f["user-data"], wantUD)
	}
	wantNC := `version: 2
ethernets:
  nic0:
    match:
      macaddress: "52:54:00:ab:00:01"
    set-name: "eth0"
    dhcp4: true
  nic1:
    match:
      macaddress: "52:54:00:ab:00:02"
    set-name: "eth1"
    dhcp4: false
    addresses: ["10.0.0.5/24"]
    routes:
      - to: default
        via: "10.0.0.1"
    nameservers:
      addresses: ["10.0.0.53"]
`
	if f["network-config"] != wantNC {
		t.Errorf("network-config:\n%s\nwant:\n%s", f["network-config"], wantNC)
	}
	// A changed configuration changes the instance id (cloud-init then
	// applies it again).
	s := seedSpec()
	s.NICs[0].MAC = "52:54:00:ab:00:09"
	if SeedFiles(s)["meta-data"] == f["meta-data"] {
		t.Error("instance-id did not change with the network configuration")
	}
}

// readISO reads back what writeISO wrote: the volume label and the root
// directory's files under their Rock Ridge names.
func readISO(t *testing.T, img []byte) (string, map[string]string) {
	t.Helper()
	pvd := img[16*isoSector:]
	if pvd[0] != 1 || string(pvd[1:6]) != "CD001" {
		t.Fatalf("no primary volume descriptor")
	}
	if term := img[17*isoSector:]; term[0] != 255 || string(term[1:6]) != "CD001" {
		t.Fatal("no terminator")
	}
	if size := binary.LittleEndian.Uint32(pvd[80:]); int(size)*isoSector != len(img) {
		t.Fatalf("volume size %d sectors, image %d bytes", size, len(img))
	}
	label := strings.TrimRight(string(pvd[40:72]), " ")
	rootRec := pvd[156:]
	ext := binary.LittleEndian.Uint32(rootRec[2:])
	size := binary.LittleEndian.Uint32(rootRec[10:])
	dir := img[ext*isoSector : ext*isoSector+size]
	files := map[string]string{}
	sawSP := false
	for off := 0; off < len(dir) && dir[off] != 0; off += int(dir[off]) {
		r := dir[off : off+int(dir[off])]
		idLen := int(r[32])
		su := r[33+idLen:]
		if idLen%2 == 0 {
			su = su[1:]
		}
		name := ""
		for len(su) >= 4 && su[2] >= 4 && int(su[2]) <= len(su) {
			sig, l := string(su[:2]), int(su[2])
			switch sig {
			case "SP":
				sawSP = off == 0 && su[4] == 0xBE && su[5] == 0xEF
			case "NM":
				name = string(su[5:l])
			}
			su = su[l:]
		}
		if r[25]&2 != 0 {
			continue
		}
		if name == "" {
			t.Fatalf("file %q has no Rock Ridge name", r[33:33+idLen])
		}
		fe := binary.LittleEndian.Uint32(r[2:])
		fs := binary.LittleEndian.Uint32(r[10:])
		if binary.BigEndian.Uint32(r[6:]) != fe || binary.BigEndian.Uint32(r[14:]) != fs {
			t.Fatalf("%s: both-endian fields disagree", name)
		}
		files[name] = string(img[fe*isoSector : fe*isoSector+fs])
	}
	if !sawSP {
		t.Fatal("no SUSP SP entry in the root's first record: Linux would not read the Rock Ridge names")
	}
	return label, files
}

func TestWriteSeed(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "seed.iso")
	if err := WriteSeed(p, seedSpec()); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	label, files := readISO(t, img)
	if label != "cidata" {
		t.Fatalf("label %q", label)
	}
	want := SeedFiles(seedSpec())
	if len(files) != 3 {
		t.Fatalf("files: %v", files)
	}
	for name, data := range want {
		if files[name] != data {
			t.Errorf("%s in the image:\n%s\nwant:\n%s", name, files[name], data)
		}
	}
	// Reproducible.
	again := filepath.Join(dir, "again.iso")
	if err := WriteSeed(again, seedSpec()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(again); !bytes.Equal(b, img) {
		t.Error("two seeds of the same spec differ")
	}
	// util-linux's blkid is what cloud-init uses to find the seed.
	if _, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command("blkid", "-p", "-o", "export", p).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "TYPE=iso9660") || !strings.Contains(string(out), "LABEL=cidata") {
			t.Errorf("blkid -p %s: %v\n%s", p, err, out)
		}
	}
	if _, err := exec.LookPath("isoinfo"); err == nil { // genisoimage, when installed
		out, err := exec.Command("isoinfo", "-R", "-i", p, "-x", "/network-config").Output()
		if err != nil || string(out) != want["network-config"] {
			t.Errorf("isoinfo -R -x /network-config: %v\n%s", err, out)
		}
	}
}

func TestISONames(t *testing.T) {
	for in, want := range map[string]string{"meta-data": "META_DAT.;1", "user-data": "USER_DAT.;1", "network-config": "NETWORK_.;1", "a.txt": "A.TXT;1"} {
		if got := isoName(in); got != want {
			t.Errorf("isoName(%q) = %q, want %q", in, got, want)
		}
	}
	err := writeISO(&bytes.Buffer{}, "x", []isoFile{{Name: "network-config-a"}, {Name: "network-config-b"}}, seedTime)
	if err == nil || !strings.Contains(err.Error(), "same ISO name") {
		t.Errorf("colliding names: %v", err)
	}
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// TestEventsFlagAMACMovingBetweenPorts: link, neighbour and FDB changes
// arrive as JSON lines; a MAC that moves from one bridge port to another is
// flagged with moved_from.
func TestEventsFlagAMACMovingBetweenPorts(t *testing.T) {
	testutil.RequireRoot(t)
	src := strings.Replace(string(topology.DefaultYAML()), "name: reference", "name: evt", 1)
	src += `  - endpoints:
      - namespace: vm2
        name: eth0
        mac: "02:00:00:00:02:02"
        addresses: [192.168.1.102/24]
      - namespace: bridge
        name: vm2
        bridge: br0
`
	src = strings.Replace(src, "\nbridges:", "\n  - name: vm2\n    role: vm\n\nbridges:", 1)
	prefix := testutil.UniquePrefix(t)
	file := filepath.Join(t.TempDir(), "evt.yaml")
	os.WriteFile(file, []byte(src), 0o644)
	common := []string{"-f", file, "--prefix", prefix, "--state-dir", t.TempDir()}
	if code, out, stderr := run(t, append([]string{"up"}, common...)...); code != 0 {
		t.Fatalf("up: %s %s", out, stderr)
	}
	topo, err := topology.Load(file, topology.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	stop := watchEvents(t, common, topo)
	pingFrom := func(ns string) {
		testutil.Try("ip", "netns", "exec", prefix+ns, "ping", "-c", "1", "-W", "1", "192.168.1.1")
	}
	pingFrom("vm1")
	testutil.Run(t, "ip", "-n", prefix+"vm2", "link", "set", "eth0", "address", "00:11:22:33:44:55") // vm1's MAC
	pingFrom("vm2")
	testutil.Run(t, "ip", "-n", prefix+"vm1", "link", "set", "eth0", "down")
	time.Sleep(300 * time.Millisecond)
	out := stop()
	var moved, down, neigh bool
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			Namespace, Type, Action, Interface, MAC, IP, Bridge string
			MovedFrom                                           string `json:"moved_from"`
			AdminUp                                             *bool  `json:"admin_up"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		switch {
		case ev.Type == "fdb" && ev.MAC == "00:11:22:33:44:55" && ev.Interface == "vm2" && ev.MovedFrom == "vm1" && ev.Bridge == "br0":
			moved = true
		case ev.Type == "link" && ev.Namespace == prefix+"vm1" && ev.Interface == "eth0" && ev.AdminUp != nil && !*ev.AdminUp:
			down = true
		case ev.Type == "neigh" && ev.Namespace == prefix+"host" && ev.IP == "192.168.1.100":
			neigh = true
		}
	}
	if !moved || !down || !neigh {
		t.Fatalf("events: moved %v, link down %v, neighbour %v:\n%s", moved, down, neigh, out)
	}
}

type lockedBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func (b *lockedBuffer) lock() {
	if b.mu == nil {
		b.mu = make(chan struct{}, 1)
	}
	b.mu <- struct{}{}
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.String()
}

func TestTopPrintsRatesWithoutATerminal(t *testing.T) {
	prefix, common := upReference(t)
	go testutil.Try("ip", "netns", "exec", prefix+"vm1", "ping", "-c", "6", "-i", "0.1", "192.168.1.1")
	code, out, stderr := run(t, append([]string{"top", "--interval", "300ms", "--count", "2"}, common...)...)
	if code != 0 {
		t.Fatalf("top: %d %s", code, stderr)
	}
	if strings.Contains(out, "\x1b[") {
		t.Fatal("top wrote terminal escapes to a non-terminal")
	}
	if strings.Count(out, "# ") != 2 || !strings.Contains(out, prefix+"bridge") || !strings.Contains(out, "RX pkt/s") {
		t.Fatalf("top output:\n%s", out)
	}
	// vm1's eth0 sent pings at ~10/s: a non-zero TX rate shows.
	m := regexp.MustCompile(prefix + `vm1\s+eth0\s+\S+\s+\S+\s+(\d+)\s+(\d+)`).FindStringSubmatch(out)
	if m == nil || m[2] == "0" {
		t.Fatalf("no TX packet rate for vm1 eth0:\n%s", out)
	}
}

func TestServeMetrics(t *testing.T) {
	prefix, _ := upReference(t)
	topo, err := topology.Default(topology.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveHTTP(ctx, ln, topo, nil) }()
	get := func(path string) string {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
		}
		return string(b)
	}
	metrics := get("/metrics")
	for _, want := range []string{
		`kvmnet_interface_up{interface="eth0",namespace="` + prefix + `vm1"} 1`,
		`kvmnet_interface_carrier{interface="vm1",namespace="` + prefix + `bridge"} 1`,
		`kvmnet_interface_mtu_bytes{interface="eth0",namespace="` + prefix + `host"} 1500`,
		`kvmnet_bridge_port_state{bridge="br0",namespace="` + prefix + `bridge",port="vm1"} 3`,
		`kvmnet_bridge_fdb_entries{bridge="br0",kind="learned",namespace="` + prefix + `bridge"} 2`,
		`kvmnet_namespace_present{namespace="` + prefix + `vm1"} 1`,
		"# TYPE kvmnet_interface_transmit_packets_total counter",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The counter agrees with the kernel (ip -s link as witness).
	m := regexp.MustCompile(`kvmnet_interface_transmit_packets_total\{interface="eth0",namespace="` + prefix + `vm1"\} (\d+)`).FindStringSubmatch(metrics)
	ipOut := testutil.Run(t, "ip", "-n", prefix+"vm1", "-s", "-j", "link", "show", "eth0")
	var links []struct {
		Stats64 struct{ TX struct{ Packets uint64 } } `json:"stats64"`
	}
	if m == nil || json.Unmarshal([]byte(ipOut), &links) != nil || len(links) != 1 {
		t.Fatalf("metric %v, ip -s -j link: %s", m, ipOut)
	}
	if got, _ := strconv.ParseUint(m[1], 10, 64); got != links[0].Stats64.TX.Packets || got == 0 {
		t.Errorf("tx packets: metric %d, ip -s link %d", got, links[0].Stats64.TX.Packets)
	}
	page := get("/")
	if !strings.Contains(page, "<svg") || !strings.Contains(page, `http-equiv="refresh"`) {
		t.Errorf("/ is not the live page:\n%.300s", page)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

func TestGraphFormats(t *testing.T) {
	// Without root the picture is the topology's; with root, live.
	code, out, stderr := run(t, "graph", "--live=false")
	if code != 0 {
		t.Fatalf("graph: %d %s", code, stderr)
	}
	var doc struct {
		XMLName xml.Name
		Texts   []string `xml:"g>text"`
		Paths   []struct {
			D string `xml:"d,attr"`
		} `xml:"path"`
	}
	if err := xml.Unmarshal([]byte(out), &doc); err != nil || doc.XMLName.Local != "svg" {
		t.Fatalf("graph -o svg is not SVG: %v\n%s", err, out)
	}
	joined := strings.Join(doc.Texts, "|")
	for _, want := range []string{"host · host", "bridge · bridge", "vm1 · vm", "br0 (bridge)", "eth0 192.168.1.100/24"} {
		if !strings.Contains(joined, want) {
			t.Errorf("SVG lacks %q: %s", want, joined)
		}
	}
	if len(doc.Paths) != 2 {
		t.Errorf("SVG has %d cables, want 2", len(doc.Paths))
	}
	_, dot, _ := run(t, "graph", "--live=false", "-o", "dot")
	if !strings.HasPrefix(dot, `graph "reference" {`) || !strings.Contains(dot, `"host/eth0" -- "bridge/host";`) || !strings.Contains(dot, `"vm1/eth0" -- "bridge/vm1";`) {
		t.Errorf("dot:\n%s", dot)
	}
	_, mm, _ := run(t, "graph", "--live=false", "-o", "mermaid")
	if !strings.HasPrefix(mm, "flowchart LR") || !strings.Contains(mm, "vm1__eth0 --- bridge__vm1") {
		t.Errorf("mermaid:\n%s", mm)
	}
	// A port mirror shows on the port and on its destination.
	_, dot, _ = run(t, "graph", "--live=false", "-o", "dot", "-f", "../../examples/mirror.yaml")
	if !strings.Contains(dot, `"bridge/vm1" [label="vm1 ⇒ mon0 (both)"];`) || !strings.Contains(dot, `"bridge/mon0" [label="mon0 ⇐ mirror ids of vm1"];`) {
		t.Errorf("mirror in dot:\n%s", dot)
	}
	path := filepath.Join(t.TempDir(), "g.html")
	if code, _, stderr := run(t, "graph", "--live=false", "-o", "html", "-w", path); code != 0 {
		t.Fatal(stderr)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "<!DOCTYPE html>") || !strings.Contains(string(b), "<svg") {
		t.Errorf("html page:\n%.200s", b)
	}
}

func TestCaptureWritesPcap(t *testing.T) {
	testutil.RequireTool(t, "tcpdump")
	prefix, common := upReference(t)
	file := filepath.Join(t.TempDir(), "c.pcap")
	go func() {
		time.Sleep(200 * time.Millisecond)
		testutil.Try("ip", "netns", "exec", prefix+"vm1", "ping", "-c", "3", "-i", "0.2", "192.168.1.1")
	}()
	code, _, stderr := run(t, append([]string{"capture", "bridge/vm1", "-w", file, "-c", "4", "--duration", "5s"}, common...)...)
	if code != 0 || !strings.Contains(stderr, "4 packets") {
		t.Fatalf("capture: %d %s", code, stderr)
	}
	// tcpdump reads the file as nobody: run as root it would first drop
	// privileges to its own user, which the guest lane's initramfs cannot
	// look up.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := os.CreateTemp("", "kvmnet-capture-*.pcap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(shared.Name()) })
	shared.Write(data)
	shared.Chmod(0o644)
	shared.Close()
	cmd := exec.Command("tcpdump", "-nr", shared.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("tcpdump -nr %s: %v\n%s", file, err, out)
	}
	if !strings.Contains(out, "192.168.1.100 > 192.168.1.1: ICMP echo request") || !strings.Contains(out, "192.168.1.1 > 192.168.1.100: ICMP echo reply") {
		t.Fatalf("tcpdump -r of the capture:\n%s", out)
	}
}

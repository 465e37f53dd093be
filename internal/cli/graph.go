package cli

import (
	"fmt"
	"html"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/topology"
)

func newGraph(g *globals) *cobra.Command {
	var file string
	var live bool
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Draw the topology: DOT, Mermaid, SVG or an HTML page (with the kernel's link state when run as root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			gr := buildGraph(t, nil)
			if live && os.Geteuid() == 0 {
				if nss, err := inspect.Network(allNames(t), inspect.Addresses); err == nil {
					gr = buildGraph(t, nss)
				}
			}
			out := g.stdout
			if file != "" {
				f, err := os.Create(file)
				if err != nil {
					return err
				}
				defer f.Close()
				out = f
			}
			switch g.output {
			case "dot":
				gr.dot(out)
			case "mermaid":
				gr.mermaid(out)
			case "svg":
				gr.svg(out)
			case "html":
				gr.html(out, 0)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "write", "w", "", "write to FILE instead of stdout")
	cmd.Flags().BoolVar(&live, "live", true, "color links by the kernel's state (needs root; without it, the topology only)")
	g.outputFlag(cmd, "svg", "dot", "mermaid", "svg", "html")
	return cmd
}

func allNames(t *topology.Topology) []string {
	var names []string
	for _, ns := range t.Namespaces {
		names = append(names, t.NSName(ns.Name))
	}
	return names
}

// graph is the drawing model: namespaces with their interfaces, and cables.
type graph struct {
	network string
	live    bool
	boxes   []*gbox
	byKey   map[string]*grow
	edges   []gedge
	at      time.Time
}

type gbox struct {
	node, role string
	col        int
	rows       []*grow
	x, y, h    int
	missing    bool
}

type grow struct {
	box    *gbox
	name   string
	label  string
	indent bool
	state  string // up, down, missing, unknown
	y      int
}

type gedge struct{ a, b *grow }

var roleColumn = map[topology.Role]int{
	topology.RoleExternal: 0, topology.RoleHost: 1, topology.RoleBridge: 2, topology.RoleVM: 3, topology.RoleEndpoint: 3,
}

func buildGraph(t *topology.Topology, nss []*inspect.Namespace) *graph {
	gr := &graph{network: t.ID(), live: nss != nil, byKey: map[string]*grow{}, at: time.Now()}
	kernel := map[string]*inspect.Namespace{}
	for _, n := range nss {
		kernel[n.Name] = n
	}
	type ep struct {
		e    topology.Endpoint
		peer string
	}
	ifaces := map[string][]ep{}
	var cables [][2]string
	addEP := func(a, b topology.Endpoint) {
		ifaces[a.Namespace] = append(ifaces[a.Namespace], ep{e: a})
		cables = append(cables, [2]string{a.Namespace + "/" + a.Name, b.Namespace + "/" + b.Name})
	}
	for _, l := range t.Links {
		addEP(l.Endpoints[0], l.Endpoints[1])
		ifaces[l.Endpoints[1].Namespace] = append(ifaces[l.Endpoints[1].Namespace], ep{e: l.Endpoints[1]})
	}
	if u := t.Uplink; u != nil && u.Mode != topology.ModeIsolated {
		self := topology.Endpoint{Namespace: u.Namespace, Name: u.Name, Addresses: u.Addresses, Bridge: u.Bridge}
		if u.Peer != nil {
			addEP(self, *u.Peer)
			ifaces[u.Peer.Namespace] = append(ifaces[u.Peer.Namespace], ep{e: *u.Peer})
		} else {
			ifaces[u.Namespace] = append(ifaces[u.Namespace], ep{e: self})
		}
	}
	state := func(ns, name string) string {
		if !gr.live {
			return "unknown"
		}
		k := kernel[t.NSName(ns)]
		if k == nil {
			return "missing"
		}
		i := k.Interface(name)
		switch {
		case i == nil:
			return "missing"
		case i.AdminUp && (i.Carrier || i.Kind == "bridge"):
			return "up"
		}
		return "down"
	}
	// Port mirrors: the ports say where their copies go, the destination
	// whose copies it carries.
	mirrorNote := map[string]string{}
	for _, m := range t.Mirrors {
		for _, p := range m.Ports {
			mirrorNote[m.Namespace+"/"+p] = fmt.Sprintf(" ⇒ %s (%s)", m.To, m.Dir())
		}
		mirrorNote[m.Namespace+"/"+m.To] = fmt.Sprintf(" ⇐ mirror %s of %s", m.Name, strings.Join(m.Ports, ","))
	}
	for _, ns := range t.Namespaces {
		b := &gbox{node: ns.Name, role: string(ns.Role), col: roleColumn[ns.Role]}
		b.missing = gr.live && kernel[t.NSName(ns.Name)] == nil
		list := ifaces[ns.Name]
		sort.SliceStable(list, func(x, y int) bool { return list[x].e.Name < list[y].e.Name })
		add := func(name, label string, indent bool) {
			label += mirrorNote[ns.Name+"/"+name]
			r := &grow{box: b, name: name, label: label, indent: indent, state: state(ns.Name, name)}
			b.rows = append(b.rows, r)
			gr.byKey[ns.Name+"/"+name] = r
		}
		for _, br := range t.Bridges {
			if br.Namespace != ns.Name {
				continue
			}
			label := br.Name + " (bridge"
			if br.STP {
				label += ", stp"
			}
			label += ")"
			if len(br.Addresses) > 0 {
				label += " " + strings.Join(br.Addresses, ",")
			}
			add(br.Name, label, false)
			for _, e := range list {
				if e.e.Bridge == br.Name {
					add(e.e.Name, e.e.Name, true)
				}
			}
		}
		for _, e := range list {
			if e.e.Bridge == "" {
				label := e.e.Name
				if len(e.e.Addresses) > 0 {
					label += " " + strings.Join(e.e.Addresses, ",")
				}
				add(e.e.Name, label, false)
			}
		}
		gr.boxes = append(gr.boxes, b)
	}
	for _, c := range cables {
		if a, b := gr.byKey[c[0]], gr.byKey[c[1]]; a != nil && b != nil {
			gr.edges = append(gr.edges, gedge{a, b})
		}
	}
	// Layout: columns by role, boxes stacked in each.
	const top, gap, rowH, titleH = 50, 24, 20, 28
	colY := map[int]int{}
	for _, b := range gr.boxes {
		b.x = 30 + b.col*330
		b.y = top + colY[b.col]
		b.h = titleH + rowH*len(b.rows) + 8
		for i, r := range b.rows {
			r.y = b.y + titleH + rowH*i + rowH/2
		}
		colY[b.col] += b.h + gap
	}
	return gr
}

const boxW = 250

func (gr *graph) size() (int, int) {
	w, h := 0, 0
	for _, b := range gr.boxes {
		w = max(w, b.x+boxW+60)
		h = max(h, b.y+b.h+40)
	}
	return w, h
}

var stateColor = map[string]string{"up": "#2e7d32", "down": "#c62828", "missing": "#9e9e9e", "unknown": "#455a64"}

func (gr *graph) svg(out io.Writer) {
	w, h := gr.size()
	fmt.Fprintf(out, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(out, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	title := "kvmnet network " + gr.network
	if gr.live {
		title += " (link state at " + gr.at.Format("15:04:05") + ")"
	}
	fmt.Fprintf(out, `<text x="30" y="30" font-size="16" font-weight="bold" fill="#212121">%s</text>`+"\n", html.EscapeString(title))
	for _, e := range gr.edges {
		x1, y1, x2, y2 := gr.anchor(e.a, e.b)
		color, dash := stateColor["up"], ""
		switch {
		case !gr.live:
			color = "#546e7a"
		case e.a.state == "missing" || e.b.state == "missing":
			color, dash = stateColor["missing"], ` stroke-dasharray="6,4"`
		case e.a.state != "up" || e.b.state != "up":
			color, dash = stateColor["down"], ` stroke-dasharray="6,4"`
		}
		mx := (x1 + x2) / 2
		if x1 == x2 {
			mx = x1 + 60
		}
		fmt.Fprintf(out, `<path d="M%d,%d C%d,%d %d,%d %d,%d" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", x1, y1, mx, y1, mx, y2, x2, y2, color, dash)
	}
	for _, b := range gr.boxes {
		stroke := "#37474f"
		if b.missing {
			stroke = stateColor["missing"]
		}
		fmt.Fprintf(out, `<g><rect x="%d" y="%d" width="%d" height="%d" rx="8" fill="#eceff1" stroke="%s" stroke-width="1.5"/>`+"\n", b.x, b.y, boxW, b.h, stroke)
		label := b.node + " · " + b.role
		if b.missing {
			label += " (missing)"
		}
		fmt.Fprintf(out, `<text x="%d" y="%d" font-weight="bold" fill="#263238">%s</text>`+"\n", b.x+10, b.y+19, html.EscapeString(label))
		for _, r := range b.rows {
			x := b.x + 12
			if r.indent {
				x += 16
			}
			fmt.Fprintf(out, `<circle cx="%d" cy="%d" r="5" fill="%s"><title>%s</title></circle>`+"\n", x, r.y, stateColor[r.state], r.state)
			fmt.Fprintf(out, `<text x="%d" y="%d" fill="#212121">%s</text>`+"\n", x+10, r.y+4, html.EscapeString(r.label))
		}
		fmt.Fprintln(out, "</g>")
	}
	// Legend.
	lx, ly := 30, h-18
	for i, s := range []string{"up", "down", "missing"} {
		if !gr.live {
			break
		}
		fmt.Fprintf(out, `<circle cx="%d" cy="%d" r="5" fill="%s"/><text x="%d" y="%d" fill="#424242">%s</text>`+"\n", lx+i*90, ly, stateColor[s], lx+i*90+10, ly+4, s)
	}
	fmt.Fprintln(out, "</svg>")
}

// anchor returns the end points of a cable: the facing sides of the boxes.
func (gr *graph) anchor(a, b *grow) (int, int, int, int) {
	if a.box.x > b.box.x {
		x2, y2, x1, y1 := gr.anchor(b, a)
		return x1, y1, x2, y2
	}
	if a.box.x == b.box.x {
		return a.box.x + boxW, a.y, b.box.x + boxW, b.y
	}
	return a.box.x + boxW, a.y, b.box.x, b.y
}

func dotID(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }

func (gr *graph) dot(out io.Writer) {
	fmt.Fprintf(out, "graph %s {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n", dotID(gr.network))
	for i, b := range gr.boxes {
		fmt.Fprintf(out, "  subgraph cluster_%d {\n    label=%s;\n", i, dotID(b.node+" ("+b.role+")"))
		for _, r := range b.rows {
			color := ""
			if gr.live {
				color = fmt.Sprintf(", color=%s", dotID(stateColor[r.state]))
			}
			fmt.Fprintf(out, "    %s [label=%s%s];\n", dotID(b.node+"/"+r.name), dotID(r.label), color)
		}
		for _, r := range b.rows {
			if r.indent {
				for j := len(b.rows) - 1; j >= 0; j-- {
					if p := b.rows[j]; !p.indent && p.y < r.y {
						fmt.Fprintf(out, "    %s -- %s [style=dotted];\n", dotID(b.node+"/"+p.name), dotID(b.node+"/"+r.name))
						break
					}
				}
			}
		}
		fmt.Fprintln(out, "  }")
	}
	for _, e := range gr.edges {
		fmt.Fprintf(out, "  %s -- %s;\n", dotID(e.a.box.node+"/"+e.a.name), dotID(e.b.box.node+"/"+e.b.name))
	}
	fmt.Fprintln(out, "}")
}

func mermaidID(s string) string {
	return strings.NewReplacer("/", "__", "-", "_", ".", "_").Replace(s)
}

func (gr *graph) mermaid(out io.Writer) {
	fmt.Fprintln(out, "flowchart LR")
	for _, b := range gr.boxes {
		fmt.Fprintf(out, "  subgraph %s [\"%s (%s)\"]\n", mermaidID("ns_"+b.node), b.node, b.role)
		for _, r := range b.rows {
			fmt.Fprintf(out, "    %s[\"%s\"]\n", mermaidID(b.node+"/"+r.name), strings.ReplaceAll(r.label, `"`, "'"))
		}
		fmt.Fprintln(out, "  end")
	}
	for _, e := range gr.edges {
		fmt.Fprintf(out, "  %s --- %s\n", mermaidID(e.a.box.node+"/"+e.a.name), mermaidID(e.b.box.node+"/"+e.b.name))
	}
}

// html writes a page with the SVG and a table of the interfaces' state;
// refresh > 0 makes the page reload itself (kvmnet serve).
func (gr *graph) html(out io.Writer, refresh int) {
	fmt.Fprintf(out, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>kvmnet %s</title>\n", html.EscapeString(gr.network))
	if refresh > 0 {
		fmt.Fprintf(out, "<meta http-equiv=\"refresh\" content=\"%d\">\n", refresh)
	}
	fmt.Fprint(out, `<style>body{font-family:DejaVu Sans,Arial,sans-serif;margin:16px;color:#212121}
table{border-collapse:collapse;margin-top:12px}td,th{border:1px solid #cfd8dc;padding:3px 8px;text-align:left}
th{background:#eceff1}.up{color:#2e7d32}.down{color:#c62828}.missing{color:#9e9e9e}</style></head><body>
`)
	fmt.Fprintf(out, "<h2>kvmnet network %s</h2>\n", html.EscapeString(gr.network))
	gr.svg(out)
	fmt.Fprintln(out, "<table><tr><th>namespace</th><th>interface</th><th>state</th></tr>")
	for _, b := range gr.boxes {
		for _, r := range b.rows {
			fmt.Fprintf(out, "<tr><td>%s</td><td>%s</td><td class=\"%s\">%s</td></tr>\n", html.EscapeString(b.node), html.EscapeString(r.label), r.state, r.state)
		}
	}
	fmt.Fprintf(out, "</table>\n<p>generated %s</p>\n</body></html>\n", gr.at.Format(time.RFC3339))
}

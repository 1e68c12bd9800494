// The weft wire contract (CONTRACT.md v1 with the v1.1 "null means absent" rule) as a Go
// control plane writes it: the messages, their subjects and headers. Written from the
// contract alone, not from the Rust types.
//
// Where a Go user would leave something unset, the field is a pointer or a slice: a nil one
// is marshalled as `null`, which the contract says means the same as leaving it out.
package main

import "fmt"

const (
	headerContentType = "Content-Type"
	headerSchema      = "Weft-Schema"
	headerKey         = "Weft-Key"
	headerSignature   = "Weft-Signature"
	contentTypeJSON   = "application/json"
	schemaVersion     = "1"
)

func specSubject(prefix, pod string) string {
	return fmt.Sprintf("%s.pod.%s.spec", prefix, pod)
}

func statusGetSubject(prefix, pod string) string {
	return fmt.Sprintf("%s.pod.%s.status.get", prefix, pod)
}

// PodSpec is the desired state of one pod's network.
type PodSpec struct {
	PodId        string         `json:"PodId"`
	Generation   uint64         `json:"Generation"`
	NotAfterUnix *uint64        `json:"NotAfterUnix"` // seconds; the agent refuses the spec after it (v1.1)
	Network      *NetworkSpec   `json:"Network"`
	Firewall     *FirewallSpec  `json:"Firewall"`
	WireGuard    *WireGuardSpec `json:"WireGuard"`
}

type NetworkSpec struct {
	Interface     string   `json:"Interface"`
	Address       string   `json:"Address"`
	Gateway       *string  `json:"Gateway"`
	Address6      *string  `json:"Address6"` // v1.1: the only global IPv6 address
	Gateway6      *string  `json:"Gateway6"` // v1.1: global or link-local
	Mtu           *uint32  `json:"Mtu"`
	Nameservers   []string `json:"Nameservers"`
	SearchDomains []string `json:"SearchDomains"`
}

type FirewallSpec struct {
	Ingress []IngressRule `json:"Ingress"`
	Egress  []EgressRule  `json:"Egress"`
}

type IngressRule struct {
	Protocol *string  `json:"Protocol"`
	Ports    []string `json:"Ports"`
	Sources  []string `json:"Sources"`
	Comment  *string  `json:"Comment"`
}

type EgressRule struct {
	Protocol     *string  `json:"Protocol"`
	Ports        []string `json:"Ports"`
	Destinations []string `json:"Destinations"`
	Comment      *string  `json:"Comment"`
}

type WireGuardSpec struct {
	Interface  string     `json:"Interface"`
	Address    string     `json:"Address"`
	ListenPort *uint16    `json:"ListenPort"`
	PrivateKey *string    `json:"PrivateKey"`
	Peers      []PeerSpec `json:"Peers"`
	// v1.1: a peer allowing 0.0.0.0/0 or ::/0 takes the default route.
	DefaultRoute *bool `json:"DefaultRoute"`
}

type PeerSpec struct {
	PublicKey                  string   `json:"PublicKey"`
	Endpoint                   *string  `json:"Endpoint"`
	AllowedIps                 []string `json:"AllowedIps"`
	PersistentKeepaliveSeconds *uint16  `json:"PersistentKeepaliveSeconds"`
	PresharedKey               *string  `json:"PresharedKey"`
}

// PodStatus is what the agent reports. The agent always sends every field (`null` where a
// subsystem is not managed); the strict decoder holds it to that.
type PodStatus struct {
	PodId              string           `json:"PodId"`
	AgentVersion       string           `json:"AgentVersion"`
	ObservedGeneration uint64           `json:"ObservedGeneration"`
	Overall            string           `json:"Overall"`
	LastError          string           `json:"LastError"`
	PublishedAtUnix    uint64           `json:"PublishedAtUnix"`
	PublishedAtUnixMs  uint64           `json:"PublishedAtUnixMs"`
	DriftRepairs       uint64           `json:"DriftRepairs"`
	LastDrift          *DriftEvent      `json:"LastDrift"`
	SignedBy           *string          `json:"SignedBy"` // the key that signed the applied spec (v1.1)
	Network            *NetworkStatus   `json:"Network"`
	Firewall           *FirewallStatus  `json:"Firewall"`
	WireGuard          *WireGuardStatus `json:"WireGuard"`
}

type DriftEvent struct {
	AtUnixMs  uint64 `json:"AtUnixMs"`
	Subsystem string `json:"Subsystem"`
	Change    string `json:"Change"`
	By        string `json:"By"`
}

type NetworkStatus struct {
	Overall   string   `json:"Overall"`
	LastError string   `json:"LastError"`
	Interface string   `json:"Interface"`
	Up        bool     `json:"Up"`
	Addresses []string `json:"Addresses"`
	Gateway   *string  `json:"Gateway"`
	Mtu       uint32   `json:"Mtu"`
	// v1.1: the global IPv6 addresses and the IPv6 default route's gateway.
	Addresses6 []string `json:"Addresses6"`
	Gateway6   *string  `json:"Gateway6"`
}

type FirewallStatus struct {
	Overall       string       `json:"Overall"`
	LastError     string       `json:"LastError"`
	TablePresent  bool         `json:"TablePresent"`
	IngressRules  uint32       `json:"IngressRules"`
	EgressRules   uint32       `json:"EgressRules"`
	RulesetHash   string       `json:"RulesetHash"`
	InputDropped  *PacketCount `json:"InputDropped"`  // what fell to chain input's policy drop (v1.1)
	EgressDropped *PacketCount `json:"EgressDropped"` // what the egress drop rules dropped (v1.1)
}

// PacketCount is what a kernel counter counted.
type PacketCount struct {
	Packets uint64 `json:"Packets"`
	Bytes   uint64 `json:"Bytes"`
}

type WireGuardStatus struct {
	Overall    string       `json:"Overall"`
	LastError  string       `json:"LastError"`
	Backend    string       `json:"Backend"`
	Interface  string       `json:"Interface"`
	PublicKey  string       `json:"PublicKey"`
	ListenPort uint16       `json:"ListenPort"`
	Peers      []PeerStatus `json:"Peers"`
}

type PeerStatus struct {
	PublicKey         string  `json:"PublicKey"`
	Endpoint          *string `json:"Endpoint"`
	LastHandshakeUnix uint64  `json:"LastHandshakeUnix"`
	RxBytes           uint64  `json:"RxBytes"`
	TxBytes           uint64  `json:"TxBytes"`
}

// ApplyReply answers a spec sent as a request.
type ApplyReply struct {
	PodId       string `json:"PodId"`
	Generation  uint64 `json:"Generation"`
	Result      string `json:"Result"`
	Error       string `json:"Error"`
	ApplyMicros uint64 `json:"ApplyMicros"`
}

// The values the contract names for the enumerations; anything else is a mismatch.
var (
	overalls   = []string{"Healthy", "Degraded", "Pending"}
	results    = []string{"Applied", "Rejected", "Stale", "Failed"}
	backends   = []string{"kernel", "userspace"}
	subsystems = []string{"Network", "Firewall", "WireGuard"}
)

func oneOf(what, got string, allowed []string) error {
	for _, a := range allowed {
		if got == a {
			return nil
		}
	}
	return fmt.Errorf("%s: %q is not one of %v", what, got, allowed)
}

// check holds a decoded status to the contract's enumerations.
func (s *PodStatus) check() error {
	if err := oneOf("Overall", s.Overall, overalls); err != nil {
		return err
	}
	if d := s.LastDrift; d != nil {
		if err := oneOf("LastDrift.Subsystem", d.Subsystem, subsystems); err != nil {
			return err
		}
	}
	if n := s.Network; n != nil {
		if err := oneOf("Network.Overall", n.Overall, overalls); err != nil {
			return err
		}
	}
	if f := s.Firewall; f != nil {
		if err := oneOf("Firewall.Overall", f.Overall, overalls); err != nil {
			return err
		}
	}
	if w := s.WireGuard; w != nil {
		if err := oneOf("WireGuard.Overall", w.Overall, overalls); err != nil {
			return err
		}
		if err := oneOf("WireGuard.Backend", w.Backend, backends); err != nil {
			return err
		}
	}
	return nil
}

//! The command line (CONTRACT.md "Command line"). Every flag can also come from the
//! environment as `WEFT_` + the flag's name in capitals with `_`. Values are parsed here, once,
//! into typed settings: nothing downstream sees a raw string.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use weft_emitter::bus::{NatsArgs, NatsConfig};
use weft_schema::sign::TrustKeys;
use weft_schema::subject::check_prefix;
use weft_schema::{Encoding, HostId, PodId, Subjects};

use crate::dataplane::{self, host, wireguard};

/// Keeps a pod's network in the state its control plane publishes on NATS.
#[derive(Debug, Parser)]
#[command(
    name = "weft-agent",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply a spec file once in this network namespace, without NATS; print the resulting
    /// PodStatus as JSON and exit 0 when it is Healthy, 1 otherwise.
    Apply(ApplyArgs),
    /// The host role: keep this machine's sandbox slots (namespaces, links, addresses,
    /// routes, NAT and port forwards) in the state a HostSpec on <prefix>.host.<host>.spec
    /// asks for.
    Host(Box<HostArgs>),
}

/// The daemon: subscribe to the pod's spec and keep the kernel matching it.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// This pod's id: 1 to 63 characters of [A-Za-z0-9_-]. Required unless `apply`.
    #[arg(long, env = "WEFT_POD_ID")]
    pub pod_id: Option<PodId>,
    /// Before any spec is known: `kept` applies only a kept spec; `baseline` also installs
    /// the baseline firewall (policy drop) at once when no spec is applied.
    #[arg(long, env = "WEFT_FIREWALL_AT_START", value_enum, default_value_t = FirewallAtStart::Kept)]
    pub firewall_at_start: FirewallAtStart,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// The flags of every daemon role: NATS, subjects, statuses, signatures.
#[derive(Debug, Args)]
pub struct SharedArgs {
    /// How to reach NATS (--nats-url is required unless the subcommand is `apply`).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Subject prefix: specs on <prefix>.pod.<pod>.spec (<prefix>.host.<host>.spec).
    #[arg(long, env = "WEFT_SUBJECT_PREFIX", default_value = "weft", value_parser = prefix)]
    pub subject_prefix: String,
    /// Longest time between two status snapshots (humantime: 5s, 1m30s).
    #[arg(long, env = "WEFT_STATUS_INTERVAL", default_value = "5s", value_parser = duration)]
    pub status_interval: Duration,
    /// Where specs come from: the plain subject, or key <pod> (host.<host>) of the JetStream
    /// KV bucket <prefix>-specs (created with history 10 when missing; the plain subject is
    /// then not consumed; deleting the key keeps the kernel as it is).
    #[arg(long, env = "WEFT_SPEC_SOURCE", value_enum, default_value_t = SpecSource::Subject)]
    pub spec_source: SpecSource,
    /// Encoding of published statuses.
    #[arg(long, env = "WEFT_STATUS_ENCODING", default_value = "json")]
    pub status_encoding: Encoding,
    /// Also mirror every status into key <pod> (host.<host>) of the JetStream KV bucket
    /// <prefix>-status (created with history 1 when missing), in --status-encoding.
    #[arg(long, env = "WEFT_STATUS_KV")]
    pub status_kv: bool,
    /// Full resync with the kernel at least this often, a safety net for lost events.
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", default_value = "60s", value_parser = duration)]
    pub resync_interval: Duration,
    /// Apply only specs signed by one of these keys: one base64 Ed25519 public key per line,
    /// `#` comments (two lines allow a rotation). Without it, anyone who may publish on the
    /// spec subject controls the pod's firewall (the host's sandboxes).
    #[arg(long, env = "WEFT_TRUST_KEYS", value_name = "FILE")]
    pub trust_keys: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (off unless given;
    /// 127.0.0.1:9477 is the suggested value).
    #[arg(long, env = "WEFT_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `weft-agent host`: the host role's own flags, and the shared ones.
#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// This host's id: 1 to 63 characters of [A-Za-z0-9_-].
    #[arg(long, env = "WEFT_HOST_ID")]
    pub host_id: Option<HostId>,
    /// Slot N's HostIp is this network's address N (an IPv4 network, at least a /18).
    #[arg(long, env = "WEFT_HOST_RANGE", default_value = "10.11.0.0/16", value_parser = host_range)]
    pub host_range: Ipv4Net,
    /// Slot N's veth pair holds this network's addresses 2N and 2N + 1, a /31 (an IPv4
    /// network, at least a /17).
    #[arg(long, env = "WEFT_VETH_RANGE", default_value = "10.12.0.0/16", value_parser = veth_range)]
    pub veth_range: Ipv4Net,
    /// Slot N's network namespace is <prefix>N (its guest namespace <prefix>N-g), as
    /// `ip netns` names it.
    #[arg(long, env = "WEFT_NETNS_PREFIX", default_value = "weft-sb-", value_parser = netns_prefix)]
    pub netns_prefix: String,
    /// Holds the last applied spec.
    #[arg(
        long,
        env = "WEFT_STATE_DIR",
        default_value = "/var/lib/weft-agent-host"
    )]
    pub state_dir: PathBuf,
}

/// Settings shared by the daemon and `apply`.
#[derive(Debug, Args, Clone)]
pub struct KernelArgs {
    /// Holds the generated WireGuard key (0600) and the last applied spec.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft-agent")]
    pub state_dir: PathBuf,
    /// The resolver file replaced when the spec names nameservers.
    #[arg(long, env = "WEFT_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// WireGuard implementation: the kernel's, boringtun in-process, or auto (kernel if it
    /// has WireGuard).
    #[arg(long, env = "WEFT_WIREGUARD", value_enum, default_value_t = WireGuardMode::Auto)]
    pub wireguard: WireGuardMode,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The PodSpec, as JSON.
    pub spec: PathBuf,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpecSource {
    Subject,
    Kv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirewallAtStart {
    Kept,
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireGuardMode {
    Auto,
    Kernel,
    Userspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(d)
}

fn prefix(text: &str) -> Result<String, String> {
    check_prefix(text).map(|()| text.to_owned())
}

/// An IPv4 network of at least `widest` (a prefix length no longer than it), without host
/// bits, clear of the loopback network and the guests' link-local /30.
fn range(text: &str, widest: u8) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 network (10.11.0.0/16)"))?;
    if net.prefix_len() > widest {
        return Err(format!(
            "a /{} is narrower than a /{widest}: slots 1 to 16383 need room",
            net.prefix_len()
        ));
    }
    if net.trunc() != net {
        return Err(format!(
            "{text} has host bits set (the network is {})",
            net.trunc()
        ));
    }
    for reserved in [host::LOOPBACK, host::GUEST_NET] {
        if net.contains(&reserved.network()) || reserved.contains(&net.network()) {
            return Err(format!("{net} overlaps {reserved}"));
        }
    }
    Ok(net)
}

fn host_range(text: &str) -> Result<Ipv4Net, String> {
    range(text, host::HOST_RANGE_WIDEST)
}

fn veth_range(text: &str) -> Result<Ipv4Net, String> {
    range(text, host::VETH_RANGE_WIDEST)
}

fn netns_prefix(text: &str) -> Result<String, String> {
    host::check_netns_prefix(text).map(|()| text.to_owned())
}

/// How parsing ended when it did not produce a command line.
#[derive(Debug)]
pub enum Exit {
    /// `--help` or `--version`: print this on stdout, exit 0.
    Info(String),
    /// A bad flag or value: print this one line on stderr, exit 64 (EX_USAGE).
    Usage(String),
}

/// Parses the command line; never exits the process itself.
pub fn parse<I, T>(args: I) -> Result<Cli, Exit>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|err| {
        use clap::error::ErrorKind;
        match err.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                Exit::Info(err.render().to_string())
            }
            _ => Exit::Usage(one_line(&err.render().to_string())),
        }
    })?;
    let required = match &cli.command {
        Some(Command::Apply(_)) => vec![],
        None => vec![
            ("--nats-url", cli.daemon.shared.nats.nats_url.is_empty()),
            ("--pod-id", cli.daemon.pod_id.is_none()),
        ],
        Some(Command::Host(host)) => {
            let host = &**host;
            let missing = vec![
                ("--nats-url", host.shared.nats.nats_url.is_empty()),
                ("--host-id", host.host_id.is_none()),
            ];
            if host.host_range.contains(&host.veth_range.network())
                || host.veth_range.contains(&host.host_range.network())
            {
                return Err(Exit::Usage(format!(
                    "weft-agent: --host-range {} and --veth-range {} overlap",
                    host.host_range, host.veth_range
                )));
            }
            missing
        }
    };
    let missing: Vec<&str> = required
        .into_iter()
        .filter_map(|(flag, absent)| absent.then_some(flag))
        .collect();
    if !missing.is_empty() {
        return Err(Exit::Usage(format!(
            "weft-agent: the following required arguments were not provided: {}",
            missing.join(", ")
        )));
    }
    Ok(cli)
}

/// A daemon's settings, every file read and checked; `S` is what the role's kernel half
/// needs (a pod's [`dataplane::Settings`], a host's [`host::Settings`]).
#[derive(Debug, Clone)]
pub struct Config<S> {
    pub subjects: Subjects,
    pub status_interval: Duration,
    pub spec_source: SpecSource,
    pub status_encoding: Encoding,
    pub status_kv: bool,
    pub resync_interval: Duration,
    pub trust: Option<Arc<TrustKeys>>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub settings: S,
}

/// The largest trust-keys file read (a key is a 44-character line).
const MAX_TRUST_KEYS_BYTES: u64 = 1024 * 1024;

fn usage(line: String) -> Exit {
    Exit::Usage(format!("weft-agent: {line}"))
}

/// Reads and checks what the pod daemon's flags name (NATS secrets and certificates, trust
/// keys); the error is the one line to exit 64 with. Opens no socket.
pub fn load(args: &DaemonArgs) -> Result<(Config<dataplane::Settings>, NatsConfig), Exit> {
    let pod = args
        .pod_id
        .clone()
        .ok_or_else(|| usage("--pod-id is required".into()))?;
    let settings = pod_settings(&args.kernel, args.firewall_at_start);
    load_shared(
        &args.shared,
        Subjects::new(&args.shared.subject_prefix, pod),
        settings,
    )
}

/// [`load`] for `weft-agent host`.
pub fn load_host(args: &HostArgs) -> Result<(Config<host::Settings>, NatsConfig), Exit> {
    let id = args
        .host_id
        .clone()
        .ok_or_else(|| usage("--host-id is required".into()))?;
    let settings = host::Settings {
        state_dir: args.state_dir.clone(),
        host_range: args.host_range,
        veth_range: args.veth_range,
        netns_prefix: args.netns_prefix.clone(),
    };
    load_shared(
        &args.shared,
        Subjects::host(&args.shared.subject_prefix, id),
        settings,
    )
}

fn load_shared<S>(
    args: &SharedArgs,
    subjects: Subjects,
    settings: S,
) -> Result<(Config<S>, NatsConfig), Exit> {
    let nats = args.nats.load().map_err(|e| usage(e.to_string()))?;
    let trust = match &args.trust_keys {
        None => None,
        Some(path) => {
            Some(Arc::new(trust_keys(path).map_err(|e| {
                usage(format!("--trust-keys {}: {e}", path.display()))
            })?))
        }
    };
    let config = Config {
        subjects,
        status_interval: args.status_interval,
        spec_source: args.spec_source,
        status_encoding: args.status_encoding,
        status_kv: args.status_kv,
        resync_interval: args.resync_interval,
        trust,
        metrics_listen: args.metrics_listen,
        settings,
    };
    Ok((config, nats))
}

/// The pod's kernel half's settings, from its flags.
pub fn pod_settings(
    kernel: &KernelArgs,
    firewall_at_start: FirewallAtStart,
) -> dataplane::Settings {
    dataplane::Settings {
        state_dir: kernel.state_dir.clone(),
        resolv_conf: kernel.resolv_conf.clone(),
        wireguard: match kernel.wireguard {
            WireGuardMode::Auto => wireguard::Mode::Auto,
            WireGuardMode::Kernel => wireguard::Mode::Kernel,
            WireGuardMode::Userspace => wireguard::Mode::Userspace,
        },
        firewall_at_start,
    }
}

fn trust_keys(path: &Path) -> Result<TrustKeys, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TRUST_KEYS_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_TRUST_KEYS_BYTES {
        return Err(format!("larger than {MAX_TRUST_KEYS_BYTES} bytes"));
    }
    TrustKeys::parse(&text).map_err(|e| e.to_string())
}

/// clap's first paragraph, which names the flag ("error: invalid value 'x' for
/// '--status-interval <STATUS_INTERVAL>': ...", or "the following required arguments were
/// not provided:" and the flags on the lines after it), on one line, without the usage block.
fn one_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let first = first.join(" ");
    format!(
        "weft-agent: {}",
        first.strip_prefix("error: ").unwrap_or(&first)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(args: &[&str]) -> String {
        match parse(args) {
            Err(Exit::Usage(line)) => line,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_contract_command_line_parses() {
        let cli = parse([
            "weft-agent",
            "--nats-url",
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
            "--pod-id",
            "web-1",
            "--status-interval",
            "1m30s",
            "--status-encoding",
            "bincode",
            "--wireguard",
            "userspace",
        ])
        .unwrap();
        let d = cli.daemon;
        assert_eq!(d.shared.nats.nats_url.len(), 2);
        assert_eq!(d.pod_id.unwrap().as_str(), "web-1");
        assert_eq!(d.shared.status_interval, Duration::from_secs(90));
        assert_eq!(d.shared.status_encoding, Encoding::Bincode);
        assert_eq!(d.kernel.wireguard, WireGuardMode::Userspace);
        assert_eq!(d.shared.subject_prefix, "weft");
    }

    #[test]
    fn apply_form_parses() {
        let cli = parse(["weft-agent", "apply", "spec.json", "--state-dir", "/tmp/x"]).unwrap();
        let Some(Command::Apply(a)) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.spec, PathBuf::from("spec.json"));
        assert_eq!(a.kernel.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_flags_give_one_line_naming_them() {
        let base = ["weft-agent", "--nats-url", "nats://x:1", "--pod-id", "p"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            usage(&v)
        };
        let line = with(&["--status-interval", "soon"]);
        assert!(line.contains("--status-interval"), "{line}");
        assert!(!line.contains('\n'));
        assert!(with(&["--bogus"]).contains("--bogus"));
        assert!(with(&["--wireguard", "maybe"]).contains("--wireguard"));
        assert!(with(&["--status-encoding", "xml"]).contains("--status-encoding"));
        assert!(with(&["--subject-prefix", "a.>"]).contains("--subject-prefix"));
        assert!(with(&["--status-interval", "0s"]).contains("--status-interval"));
        assert!(with(&["--metrics-listen", "localhost"]).contains("--metrics-listen"));
        assert!(usage(&["weft-agent", "--pod-id", "p"]).contains("--nats-url"));
        assert!(
            usage(&["weft-agent", "--nats-url", "nats://x:1", "--pod-id", "a.b"])
                .contains("--pod-id")
        );
        assert!(usage(&["weft-agent"]).contains("--nats-url"));
    }

    #[test]
    fn the_host_command_line_parses() {
        let cli = parse([
            "weft-agent",
            "host",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--host-id",
            "host-a",
            "--status-interval",
            "2s",
            "--netns-prefix",
            "t-1-sb-",
        ])
        .unwrap();
        let Some(Command::Host(h)) = cli.command else {
            panic!("not host")
        };
        assert_eq!(h.host_id.as_ref().unwrap().as_str(), "host-a");
        assert_eq!(h.host_range.to_string(), "10.11.0.0/16");
        assert_eq!(h.veth_range.to_string(), "10.12.0.0/16");
        assert_eq!(h.netns_prefix, "t-1-sb-");
        assert_eq!(h.shared.status_interval, Duration::from_secs(2));
        assert_eq!(h.state_dir, PathBuf::from("/var/lib/weft-agent-host"));
        let (config, _) = load_host(&h).unwrap();
        assert_eq!(config.subjects.spec(), "weft.host.host-a.spec");
        assert_eq!(config.settings.netns_prefix, "t-1-sb-");
        // The narrowest ranges allowed.
        parse([
            "weft-agent",
            "host",
            "--nats-url",
            "nats://x:1",
            "--host-id",
            "h",
            "--host-range",
            "10.64.0.0/18",
            "--veth-range",
            "10.128.0.0/17",
        ])
        .unwrap();
    }

    #[test]
    fn bad_host_flags_give_one_line_naming_them() {
        let with = |extra: &[&str]| {
            let mut v = vec![
                "weft-agent",
                "host",
                "--nats-url",
                "nats://x:1",
                "--host-id",
                "h",
            ];
            v.extend_from_slice(extra);
            usage(&v)
        };
        let line = with(&["--host-range", "10.11.0.0/19"]);
        assert!(line.contains("--host-range"), "{line}");
        assert!(line.contains("a /19 is narrower than a /18"), "{line}");
        assert!(!line.contains('\n'));
        let line = with(&["--veth-range", "10.12.0.0/18"]);
        assert!(line.contains("--veth-range"), "{line}");
        assert!(line.contains("a /18 is narrower than a /17"), "{line}");
        assert!(with(&["--host-range", "10.11.0.1/16"]).contains("host bits"));
        assert!(with(&["--host-range", "fd00::/64"]).contains("--host-range"));
        assert!(with(&["--veth-range", "127.0.0.0/8"]).contains("overlaps 127.0.0.0/8"));
        assert!(with(&["--veth-range", "169.254.0.0/16"]).contains("overlaps 169.254.0.20/30"));
        let line = with(&["--veth-range", "10.11.0.0/16"]);
        assert!(
            line.contains("--host-range 10.11.0.0/16 and --veth-range"),
            "{line}"
        );
        assert!(with(&["--netns-prefix", "a/b"]).contains("--netns-prefix"));
        assert!(with(&["--pod-id", "p"]).contains("--pod-id"));
        assert!(usage(&["weft-agent", "host", "--nats-url", "nats://x:1"]).contains("--host-id"));
        assert!(usage(&["weft-agent", "host", "--host-id", "h"]).contains("--nats-url"));
        assert!(with(&["--host-id", "a.b"]).contains("--host-id"));
    }

    #[test]
    fn help_and_version_are_not_errors() {
        assert!(matches!(
            parse(["weft-agent", "--help"]),
            Err(Exit::Info(_))
        ));
        assert!(matches!(
            parse(["weft-agent", "--version"]),
            Err(Exit::Info(_))
        ));
    }
}

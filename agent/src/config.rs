//! The command line (CONTRACT.md "Command line"). Every flag can also come from the
//! environment as `WEFT_` + the flag's name in capitals with `_`. Values are parsed here, once,
//! into typed settings: nothing downstream sees a raw string.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weft_emitter::bus::{NatsArgs, NatsConfig};
use weft_schema::sign::TrustKeys;
use weft_schema::subject::check_prefix;
use weft_schema::{Encoding, PodId, Subjects};

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
}

/// The daemon: subscribe to the pod's spec and keep the kernel matching it.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// How to reach NATS (--nats-url is required unless the subcommand is `apply`).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// This pod's id: 1 to 63 characters of [A-Za-z0-9_-]. Required unless `apply`.
    #[arg(long, env = "WEFT_POD_ID")]
    pub pod_id: Option<PodId>,
    /// Subject prefix: specs on <prefix>.pod.<pod>.spec.
    #[arg(long, env = "WEFT_SUBJECT_PREFIX", default_value = "weft", value_parser = prefix)]
    pub subject_prefix: String,
    /// Longest time between two status snapshots (humantime: 5s, 1m30s).
    #[arg(long, env = "WEFT_STATUS_INTERVAL", default_value = "5s", value_parser = duration)]
    pub status_interval: Duration,
    /// Where specs come from: the plain subject, or key <pod> of the JetStream KV bucket
    /// <prefix>-specs (created with history 10 when missing; the plain subject is then not
    /// consumed; deleting the key keeps the kernel as it is).
    #[arg(long, env = "WEFT_SPEC_SOURCE", value_enum, default_value_t = SpecSource::Subject)]
    pub spec_source: SpecSource,
    /// Encoding of published statuses.
    #[arg(long, env = "WEFT_STATUS_ENCODING", default_value = "json")]
    pub status_encoding: Encoding,
    /// Also mirror every status into key <pod> of the JetStream KV bucket <prefix>-status
    /// (created with history 1 when missing), in --status-encoding.
    #[arg(long, env = "WEFT_STATUS_KV")]
    pub status_kv: bool,
    /// Full resync with the kernel at least this often, a safety net for lost events.
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", default_value = "60s", value_parser = duration)]
    pub resync_interval: Duration,
    /// Apply only specs signed by one of these keys: one base64 Ed25519 public key per line,
    /// `#` comments (two lines allow a rotation). Without it, anyone who may publish on the
    /// spec subject controls the pod's firewall.
    #[arg(long, env = "WEFT_TRUST_KEYS", value_name = "FILE")]
    pub trust_keys: Option<PathBuf>,
    /// Before any spec is known: `kept` applies only a kept spec; `baseline` also installs
    /// the baseline firewall (policy drop) at once when no spec is applied.
    #[arg(long, env = "WEFT_FIREWALL_AT_START", value_enum, default_value_t = FirewallAtStart::Kept)]
    pub firewall_at_start: FirewallAtStart,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (off unless given;
    /// 127.0.0.1:9477 is the suggested value).
    #[arg(long, env = "WEFT_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub kernel: KernelArgs,
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
    if cli.command.is_none() {
        let missing: Vec<&str> = [
            ("--nats-url", cli.daemon.nats.nats_url.is_empty()),
            ("--pod-id", cli.daemon.pod_id.is_none()),
        ]
        .into_iter()
        .filter_map(|(flag, absent)| absent.then_some(flag))
        .collect();
        if !missing.is_empty() {
            return Err(Exit::Usage(format!(
                "weft-agent: the following required arguments were not provided: {}",
                missing.join(", ")
            )));
        }
    }
    Ok(cli)
}

/// The daemon's settings, every file read and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub subjects: Subjects,
    pub status_interval: Duration,
    pub spec_source: SpecSource,
    pub status_encoding: Encoding,
    pub status_kv: bool,
    pub resync_interval: Duration,
    pub trust: Option<Arc<TrustKeys>>,
    pub firewall_at_start: FirewallAtStart,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub kernel: KernelArgs,
}

/// The largest trust-keys file read (a key is a 44-character line).
const MAX_TRUST_KEYS_BYTES: u64 = 1024 * 1024;

/// Reads and checks what the daemon's flags name (NATS secrets and certificates, trust
/// keys); the error is the one line to exit 64 with. Opens no socket.
pub fn load(args: &DaemonArgs) -> Result<(Config, NatsConfig), Exit> {
    let usage = |line: String| Exit::Usage(format!("weft-agent: {line}"));
    let pod = args
        .pod_id
        .clone()
        .ok_or_else(|| usage("--pod-id is required".into()))?;
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
        subjects: Subjects::new(&args.subject_prefix, pod),
        status_interval: args.status_interval,
        spec_source: args.spec_source,
        status_encoding: args.status_encoding,
        status_kv: args.status_kv,
        resync_interval: args.resync_interval,
        trust,
        firewall_at_start: args.firewall_at_start,
        metrics_listen: args.metrics_listen,
        kernel: args.kernel.clone(),
    };
    Ok((config, nats))
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
        assert_eq!(d.nats.nats_url.len(), 2);
        assert_eq!(d.pod_id.unwrap().as_str(), "web-1");
        assert_eq!(d.status_interval, Duration::from_secs(90));
        assert_eq!(d.status_encoding, Encoding::Bincode);
        assert_eq!(d.kernel.wireguard, WireGuardMode::Userspace);
        assert_eq!(d.subject_prefix, "weft");
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

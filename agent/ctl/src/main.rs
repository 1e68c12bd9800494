//! `weftctl`: publish specs and wait for their replies, make signing keys, read and watch
//! statuses, serve a live dashboard page (CONTRACT.md v1.1 "weftctl"). Built on
//! [`weft_client`]; talks NATS through the agent's own flags and connection code.
//!
//! Exit codes (`weftctl apply`): 0 `Applied` (or published, without `--wait`; or valid,
//! with `--dry-run`), 2 `Rejected` (also a spec `--dry-run` refuses), 3 `Stale`, 4 `Failed`,
//! 5 no reply within `--timeout` (or no agent subscribed), 1 any other error, 64 a bad
//! command line or flag file. `weftctl status` exits 5 when a pod (host) named has no status.

mod dashboard;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use weft_client::fleet::{self, Fleet};
use weft_client::{Client, Spec, Target};
use weft_emitter::bus::NatsArgs;
use weft_schema::sign::SigningKey;
use weft_schema::{ApplyResult, PodId};
use zeroize::Zeroizing;

/// EX_USAGE from sysexits.h.
const EX_USAGE: u8 = 64;
const EX_REJECTED: u8 = 2;
const EX_STALE: u8 = 3;
const EX_FAILED: u8 = 4;
const EX_NO_REPLY: u8 = 5;

/// Operate weft agents over NATS: apply specs, read and watch statuses.
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    /// Subject prefix of the agents (`<prefix>.pod.<pod>.spec`).
    #[arg(
        long,
        env = "WEFT_SUBJECT_PREFIX",
        default_value = "weft",
        global = true
    )]
    subject_prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a spec (a request with --wait: print the reply, exit by its result).
    Apply(ApplyArgs),
    /// Make an Ed25519 key pair for --sign-key (private) and --trust-keys (public).
    Keygen(KeygenArgs),
    /// One row per pod (or host), from status.get and the <prefix>-status bucket.
    Status(StatusArgs),
    /// The status table, live, from the status subjects.
    Watch(WatchArgs),
    /// The live view as a web page (server-sent events, no external assets).
    Dashboard(DashboardArgs),
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// The spec, as JSON, sent byte for byte.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "SPEC",
        conflicts_with = "spec"
    )]
    file: Option<PathBuf>,
    /// The spec (the same as -f).
    #[arg(value_name = "SPEC", required_unless_present = "file")]
    spec: Option<PathBuf>,
    /// A HostSpec for host ID (<prefix>.host.<ID>.spec); without ID, the host its HostId
    /// names.
    #[arg(long, value_name = "ID", num_args = 0..=1)]
    host: Option<Option<String>>,
    /// Send to this pod (or host) instead of the one the spec names.
    #[arg(long, value_name = "ID")]
    to: Option<String>,
    /// Send as a request and wait for the agent's reply.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (humantime: 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = duration)]
    timeout: Duration,
    /// Sign with this private key (base64 Ed25519 seed, readable by its owner only).
    #[arg(long, env = "WEFT_SIGN_KEY", value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Check the spec with the agent's own reading (decode, validation, expiry) and exit;
    /// nothing is sent, NATS is not needed.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where the private key goes (created 0600; FILE.pub gets the public key).
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Pods (hosts, with --host) to show (default: every one in the <prefix>-status bucket).
    pods: Vec<String>,
    /// Host agents instead of pods: one row per host.
    #[arg(long)]
    host: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The agents' --status-interval: a status older than three of them is stale.
    #[arg(long, env = "WEFT_STATUS_INTERVAL", default_value = "5s", value_parser = duration)]
    status_interval: Duration,
    /// How long each status.get waits.
    #[arg(long, default_value = "2s", value_parser = duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Host agents instead of pods: one row per host.
    #[arg(long)]
    host: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The agents' --status-interval: a status older than three of them is stale.
    #[arg(long, env = "WEFT_STATUS_INTERVAL", default_value = "5s", value_parser = duration)]
    status_interval: Duration,
}

#[derive(Debug, Args)]
struct DashboardArgs {
    /// Where to serve the page.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// The agents' --status-interval: a status older than three of them is stale.
    #[arg(long, env = "WEFT_STATUS_INTERVAL", default_value = "5s", value_parser = duration)]
    status_interval: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(d)
}

/// A failure with the exit code it means.
struct Exit(u8, String);

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Exit {
        Exit(1, format!("{:#}", e.into()))
    }
}

fn usage(line: impl std::fmt::Display) -> Exit {
    Exit(EX_USAGE, line.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EX_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,async_nats=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit(code, line)) => {
            if !line.is_empty() {
                eprintln!("weftctl: {line}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Exit> {
    weft_schema::subject::check_prefix(&cli.subject_prefix)
        .map_err(|e| usage(format!("--subject-prefix {e}")))?;
    match cli.command {
        Command::Keygen(args) => keygen(&args),
        Command::Apply(args) if args.dry_run => dry_run(&args),
        Command::Apply(args) => apply(&connect(&cli.nats, &cli.subject_prefix).await?, &args).await,
        Command::Status(args) => {
            status(&connect(&cli.nats, &cli.subject_prefix).await?, &args).await
        }
        Command::Watch(args) => watch(&connect(&cli.nats, &cli.subject_prefix).await?, &args).await,
        Command::Dashboard(args) => {
            let client = connect(&cli.nats, &cli.subject_prefix).await?;
            dashboard::serve(client, args.listen, args.status_interval).await
        }
    }
}

async fn connect(nats: &NatsArgs, prefix: &str) -> Result<Client, Exit> {
    let config = nats.load().map_err(usage)?;
    Ok(Client::connect(&config, prefix, "weftctl").await?)
}

/// The spec file and the agent it is for.
fn read_spec_file(args: &ApplyArgs) -> Result<(Bytes, Target), Exit> {
    let file = args
        .file
        .as_ref()
        .or(args.spec.as_ref())
        .ok_or_else(|| usage("no spec file (-f SPEC)"))?;
    let body = std::fs::read(file).map_err(|e| usage(format!("-f {}: {e}", file.display())))?;
    let field = if args.host.is_some() {
        "HostId"
    } else {
        "PodId"
    };
    let named = args
        .to
        .as_ref()
        .or(args.host.as_ref().and_then(Option::as_ref));
    let id = match named {
        Some(id) => id.clone(),
        None => {
            // Only the id is read here; the agent (or --dry-run) reads the whole spec.
            let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                usage(format!(
                    "-f {}: cannot find {field} (not JSON: {e}); name the agent with --to",
                    file.display()
                ))
            })?;
            value
                .get(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    usage(format!(
                        "-f {}: no {field} string in it; name the agent with --to",
                        file.display()
                    ))
                })?
        }
    };
    let target = if args.host.is_some() {
        Target::host(&id)
    } else {
        Target::pod(&id)
    }
    .map_err(|e| usage(format!("{field} {e}")))?;
    Ok((Bytes::from(body), target))
}

fn sign_key(path: &Path) -> Result<SigningKey, Exit> {
    let text = weft_emitter::bus::read_secret(path)
        .map_err(|e| usage(format!("--sign-key {}: {e}", path.display())))?;
    SigningKey::parse(&text).map_err(|e| usage(format!("--sign-key {}: {e}", path.display())))
}

/// `--dry-run`: what the agent would answer, by the agent's own code (signature aside:
/// that is the agent's `--trust-keys` to judge).
fn dry_run(args: &ApplyArgs) -> Result<(), Exit> {
    use weft_agent::intake::SpecMessage;
    let (body, target) = read_spec_file(args)?;
    let id = PodId::parse(target.id()).map_err(usage)?;
    let mut message = SpecMessage::with_body(body);
    message.content_type = Some(weft_schema::codec::CONTENT_TYPE_JSON.into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (generation, role) = if args.host.is_some() {
        (judge::<weft_schema::HostSpec>(&id, &message, now)?, "host")
    } else {
        (judge::<weft_schema::PodSpec>(&id, &message, now)?, "pod")
    };
    println!("valid: generation {generation} for {role} {id} (nothing sent)");
    Ok(())
}

/// The generation of a spec the agent `id` would apply, or its refusal.
fn judge<W: weft_schema::WireSpec>(
    id: &PodId,
    message: &weft_agent::intake::SpecMessage,
    now: u64,
) -> Result<u64, Exit> {
    use weft_agent::intake::{expired, read_spec, Read};
    use weft_schema::Applicable;
    match read_spec::<W>(id, None, message) {
        Read::Valid { spec, .. } => match expired(&*spec, now) {
            Some(error) => Err(Exit(EX_REJECTED, error)),
            None => Ok(spec.generation()),
        },
        Read::Rejected { error, .. } => Err(Exit(EX_REJECTED, error)),
    }
}

async fn apply(client: &Client, args: &ApplyArgs) -> Result<(), Exit> {
    let (body, target) = read_spec_file(args)?;
    let mut spec = Spec::json(body);
    if let Some(path) = &args.sign_key {
        spec = spec.signed(&sign_key(path)?);
    }
    if !args.wait {
        client.publish(&target, &spec).await?;
        println!("published to {} {}", target.role(), target.id());
        return Ok(());
    }
    let reply = match client.apply(&target, &spec, args.timeout).await {
        Ok(reply) => reply,
        Err(e @ (weft_client::Error::NoAnswer(..) | weft_client::Error::NoResponders(_))) => {
            return Err(Exit(EX_NO_REPLY, e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&reply).expect("a reply serializes")
    );
    match reply.result {
        ApplyResult::Applied => Ok(()),
        ApplyResult::Rejected => Err(Exit(EX_REJECTED, String::new())),
        ApplyResult::Stale => Err(Exit(EX_STALE, String::new())),
        ApplyResult::Failed => Err(Exit(EX_FAILED, String::new())),
    }
}

fn keygen(args: &KeygenArgs) -> Result<(), Exit> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mode = std::fs::metadata(&dir)
        .map_err(|e| usage(format!("--out {}: {e}", dir.display())))?
        .mode();
    if mode & 0o002 != 0 {
        return Err(usage(format!(
            "--out: {} is writable by others; a private key does not go there",
            dir.display()
        )));
    }
    let key = SigningKey::generate();
    let seed: Zeroizing<String> = key.expose_base64();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .map_err(|e| usage(format!("--out {}: {e}", args.out.display())))?;
    file.write_all(seed.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", args.out.display()))?;
    let public = key.verifying_key().to_base64();
    let mut pub_path = args.out.clone().into_os_string();
    pub_path.push(".pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("write {}", Path::new(&pub_path).display()))?;
    println!("{public}");
    Ok(())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn status(client: &Client, args: &StatusArgs) -> Result<(), Exit> {
    let mut fleet = Fleet::new(args.status_interval);
    for (key, generation) in client.wanted().await {
        fleet.want(&key, generation);
    }
    if args.host {
        // As for pods, over the host subjects and the bucket's `host.<host>` keys.
        let stored = client.stored_hosts().await.unwrap_or_else(warn_empty);
        let (statuses, missing) = gather(
            &args.pods,
            &stored,
            |s| &s.host_id,
            "host ",
            async |host: &str| client.host_status_get(host, args.timeout).await,
        )
        .await;
        for s in statuses {
            fleet.update_host(s);
        }
        let rows = fleet.host_rows(now_unix_ms());
        print_rows(args.output, &rows, fleet::host_table(&rows));
        return found_all(missing);
    }
    let stored = client.stored().await.unwrap_or_else(warn_empty);
    let (statuses, missing) = gather(
        &args.pods,
        &stored,
        |s| &s.pod_id,
        "",
        async |pod: &str| client.status_get(pod, args.timeout).await,
    )
    .await;
    for s in statuses {
        fleet.update(s);
    }
    let rows = fleet.rows(now_unix_ms());
    print_rows(args.output, &rows, fleet::table(&rows));
    found_all(missing)
}

/// The status bucket could not be read: said once, and the live answers alone are shown.
fn warn_empty<S>(e: weft_client::Error) -> Vec<S> {
    eprintln!("weftctl: {}", weft_schema::text::ErrorLine(&e));
    Vec::new()
}

/// The statuses of `ids` (every stored one when none is named): each agent's answer to
/// `status.get`, else the bucket's copy, which says how long the agent has been silent. The
/// ids with neither come back as `missing` lines, `{label}{id}: {error}`.
async fn gather<S: Clone>(
    ids: &[String],
    stored: &[S],
    id_of: impl Fn(&S) -> &String,
    label: &str,
    get: impl AsyncFn(&str) -> Result<S, weft_client::Error>,
) -> (Vec<S>, Vec<String>) {
    let ids: Vec<String> = if ids.is_empty() {
        stored.iter().map(|s| id_of(s).clone()).collect()
    } else {
        ids.to_vec()
    };
    let (mut statuses, mut missing) = (Vec::new(), Vec::new());
    for id in &ids {
        match get(id).await {
            Ok(s) => statuses.push(s),
            Err(e) => match stored.iter().find(|s| id_of(s) == id) {
                Some(s) => statuses.push(s.clone()),
                None => missing.push(format!("{label}{id}: {e}")),
            },
        }
    }
    (statuses, missing)
}

fn print_rows<R: serde::Serialize>(output: Output, rows: &[R], table: String) {
    match output {
        Output::Table => print!("{table}"),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(rows).expect("rows serialize")
        ),
    }
}

fn found_all(missing: Vec<String>) -> Result<(), Exit> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Exit(
            EX_NO_REPLY,
            format!("no status: {}", missing.join("; ")),
        ))
    }
}

/// Fills `fleet` with what is known now: the bucket, then `status.get` of each pod and
/// host in it.
async fn fill(client: &Client, fleet: &mut Fleet) {
    let stored = client.stored().await.unwrap_or_default();
    for (key, generation) in client.wanted().await {
        fleet.want(&key, generation);
    }
    for s in stored {
        let pod = s.pod_id.clone();
        fleet.update(s);
        if let Ok(fresh) = client.status_get(&pod, Duration::from_secs(1)).await {
            fleet.update(fresh);
        }
    }
    for s in client.stored_hosts().await.unwrap_or_default() {
        let host = s.host_id.clone();
        fleet.update_host(s);
        if let Ok(fresh) = client.host_status_get(&host, Duration::from_secs(1)).await {
            fleet.update_host(fresh);
        }
    }
}

/// The rows with what moves by itself (ages, publication times) taken out: what a frame
/// without a terminal is printed for.
fn moved<R: serde::Serialize>(rows: &[R]) -> serde_json::Value {
    let mut v = serde_json::to_value(rows).expect("rows serialize");
    for r in v.as_array_mut().into_iter().flatten() {
        r["AgeMs"] = 0.into();
        r["Status"]["PublishedAtUnix"] = 0.into();
        r["Status"]["PublishedAtUnixMs"] = 0.into();
    }
    v
}

async fn watch(client: &Client, args: &WatchArgs) -> Result<(), Exit> {
    let mut statuses = client.watch().await?;
    let mut host_statuses = client.watch_hosts().await?;
    let mut fleet = Fleet::new(args.status_interval);
    fill(client, &mut fleet).await;
    let tty = std::io::stdout().is_terminal() && args.output == Output::Table;
    let mut shown: Option<serde_json::Value> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            status = statuses.next() => match status {
                Some(s) => { fleet.update(s); }
                None => return Err(Exit(1, "the status subscription ended".into())),
            },
            status = host_statuses.next() => match status {
                Some(s) => { fleet.update_host(s); }
                None => return Err(Exit(1, "the host status subscription ended".into())),
            },
            _ = tick.tick() => {}
        }
        let now = now_unix_ms();
        let (rows, table) = if args.host {
            let rows = fleet.host_rows(now);
            (serde_json::to_value(&rows), fleet::host_table(&rows))
        } else {
            let rows = fleet.rows(now);
            (serde_json::to_value(&rows), fleet::table(&rows))
        };
        let rows = rows.expect("rows serialize");
        // Without a terminal, a frame is printed when something other than the age moved.
        let key = moved(rows.as_array().map_or(&[][..], |r| &r[..]));
        if !tty && shown.as_ref() == Some(&key) {
            continue;
        }
        shown = Some(key);
        let mut out = std::io::stdout().lock();
        let frame = match args.output {
            Output::Json => format!("{}\n", serde_json::json!({ "AtUnixMs": now, "Rows": rows })),
            Output::Table if tty => format!("\x1b[H\x1b[2J{table}"),
            Output::Table => format!("{table}\n"),
        };
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(()); // the reader went away
        }
    }
}

//! `weft-stack-init`: the secrets and the nats-server configuration of a local stack
//! (`compose.yaml`), made at run time, never committed.
//!
//! Into `--out DIR` it writes the configuration weft ships (`weft_testkit::natsconf`: one
//! nkey user per pod with its own subjects only, a control-plane and a dashboard user,
//! JetStream, TLS) with literal paths under DIR, and beside it each user's nkey seed, a CA
//! and the server's certificate for `--server-name`s, and the control plane's spec-signing
//! key with the trust file the agents read (`--trust-keys`). Private files are mode 0600.
//! When DIR already holds `nats.conf` nothing is written: a stack brought up again keeps its
//! identities (and the pods' kept specs stay verifiable).
//!
//! Prints the file names it wrote (never a secret).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use weft_schema::sign::SigningKey;
use weft_testkit::identity::write_secret;
use weft_testkit::natsconf::{
    control_plane_permissions, dashboard_permissions, pod_permissions, user_nkey, Authorization,
    Credential, Permissions, ServerConfig, Tls, User, Value, WEFT_MAX_PAYLOAD,
};
use weft_testkit::pki::Ca;

/// Make a local stack's NATS configuration, credentials and signing key.
#[derive(Debug, Parser)]
#[command(name = "weft-stack-init")]
struct Cli {
    /// Where everything goes (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The pods, each with a user of its own.
    #[arg(long = "pod", value_name = "ID", required = true)]
    pods: Vec<String>,
    /// Names the server's certificate is valid for (host names or IP addresses).
    #[arg(long = "server-name", value_name = "NAME", default_values = ["nats", "localhost", "127.0.0.1"])]
    server_names: Vec<String>,
    /// JetStream's store directory, as nats-server sees it.
    #[arg(long, value_name = "DIR", default_value = "/data/jetstream")]
    store: PathBuf,
    #[arg(long, default_value = "weft")]
    subject_prefix: String,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-stack-init: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn literal(path: &Path) -> Value {
    Value::Literal(path.display().to_string())
}

fn run(cli: &Cli) -> Result<()> {
    weft_schema::subject::check_prefix(&cli.subject_prefix)
        .map_err(|e| anyhow::anyhow!("--subject-prefix {e}"))?;
    for pod in &cli.pods {
        weft_schema::PodId::parse(pod).map_err(|e| anyhow::anyhow!("--pod {pod:?}: {e}"))?;
    }
    let out = &cli.out;
    let conf = out.join("nats.conf");
    if conf.exists() {
        println!("{} exists: keeping this stack's identities", conf.display());
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;

    let prefix = cli.subject_prefix.as_str();
    let mut users = Vec::new();
    let mut user = |name: &str, role: String, permissions: Permissions| -> Result<()> {
        let (seed, public) = user_nkey();
        let file = write_secret(&out.join(format!("{name}.nk")), &seed)?;
        println!("{}", file.display());
        users.push(User {
            role,
            credential: Credential::Nkey(Value::Literal(public)),
            permissions,
        });
        Ok(())
    };
    for pod in &cli.pods {
        user(
            pod,
            format!("pod {pod}: its own spec, status and status.get only"),
            pod_permissions(prefix, pod),
        )?;
    }
    user(
        "control",
        "control plane: publishes specs, reads statuses, manages the buckets".into(),
        control_plane_permissions(prefix),
    )?;
    user(
        "dashboard",
        "dashboard: reads statuses only".into(),
        dashboard_permissions(prefix),
    )?;

    let ca = Ca::new(out, "ca")?;
    let server = ca.server_for("nats-server", cli.server_names.clone())?;
    println!("{}\n{}", ca.cert.display(), server.cert.display());

    let key = SigningKey::generate();
    let file = write_secret(&out.join("sign.key"), &key.expose_base64())?;
    println!("{}", file.display());
    let trust = out.join("trust.keys");
    std::fs::write(
        &trust,
        format!(
            "# the control plane's spec-signing key\n{}\n",
            key.verifying_key().to_base64()
        ),
    )?;
    println!("{}", trust.display());

    let config = ServerConfig {
        jetstream: Some(literal(&cli.store)),
        authorization: Authorization::Users(users),
        tls: Some(Tls {
            cert: literal(&server.cert),
            key: literal(&server.key),
            ca: literal(&ca.cert),
            verify: false,
        }),
        max_payload: Some(WEFT_MAX_PAYLOAD),
    };
    // Written last: its presence means the directory is complete.
    let tmp = out.join("nats.conf.tmp");
    std::fs::write(&tmp, config.render())?;
    std::fs::rename(&tmp, &conf)?;
    println!("{}", conf.display());
    Ok(())
}

//! `weft-agent`: parse the command line (exit 64 on a bad one, before any socket opens), set
//! up logging, and run the daemon until SIGTERM or SIGINT, or apply one spec file.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use weft_agent::config::{self, Command, Exit, LogFormat};
use weft_agent::dataplane::error_line;
use weft_agent::role::{Host, Plane, Pod, Role};
use weft_schema::Overall;

/// jemalloc instead of glibc's malloc: a spec is a million short strings at worst (16 MiB of
/// `/32`s), and glibc gives each a 32-byte chunk where jemalloc uses 16 bytes. Measured with
/// `benches/spec_memory.rs`, a 16 MiB spec's peak above idle went from 4.5x its size to 4.1x
/// with it, and to 3.8x with validation that frees each rule as it goes.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// EX_USAGE from sysexits.h: the command line was wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match config::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(Exit::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(Exit::Usage(line)) => {
            eprintln!("{line}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_logging(cli.log.log_format);

    match cli.command {
        Some(Command::Host(args)) => host(&args),
        Some(Command::Apply(args)) => match weft_agent::run::apply_once(&args) {
            Ok(status) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serializes")
                );
                if status.overall == Overall::Healthy {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("weft-agent: {}", error_line(&e));
                ExitCode::FAILURE
            }
        },
        None => daemon(&cli.daemon),
    }
}

/// The pod daemon: files checked (exit 64), then the connection and the agent until a
/// signal.
fn daemon(args: &config::DaemonArgs) -> ExitCode {
    match config::load(args) {
        Ok((config, nats)) => serve::<Pod>(config, nats, "this pod's firewall"),
        Err(Exit::Usage(line)) | Err(Exit::Info(line)) => {
            eprintln!("{line}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// `weft-agent host`: files checked (exit 64), then the host agent until a signal.
fn host(args: &config::HostArgs) -> ExitCode {
    match config::load_host(args) {
        Ok((config, nats)) => serve::<Host>(config, nats, "this host's sandboxes"),
        Err(Exit::Usage(line)) | Err(Exit::Info(line)) => {
            eprintln!("{line}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// Runs the agent of role `R` until a signal; `controls` says what an unsigned spec
/// controls, for the warning.
fn serve<R: Role>(
    config: config::Config<<R::Plane as Plane>::Settings>,
    nats: weft_emitter::bus::NatsConfig,
    controls: &str,
) -> ExitCode {
    if config.trust.is_none() {
        tracing::warn!(
            subject = %config.subjects.spec(),
            "no --trust-keys: specs are not signed, and anyone who may publish on the spec \
             subject controls {controls}"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let bus = nats
            .connect(weft_agent::run::connect_options(&config.subjects))
            .await
            .map_err(|e| anyhow::anyhow!("NATS: {}", error_line(&e)))?;
        weft_agent::run::run::<R>(config, bus, terminated()).await
    });
    // A decode in progress on a blocking thread must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(cause = %format!("{e:#}"), "agent failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn terminated() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

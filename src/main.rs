//! The `consortium-dns` binary: `serve`, `check`, `status`. A thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consortium_dns::config::{Config, DEFAULT_CONFIG_PATH};
use consortium_dns::snapshot::Snapshot;

/// sysexits.h: bad command line or config.
const EX_USAGE: u8 = 64;
/// sysexits.h: bad zone or members data.
const EX_DATAERR: u8 = 65;
/// sysexits.h: cannot bind or similar.
const EX_OSERR: u8 = 71;

#[derive(Parser)]
#[command(
    name = "consortium-dns",
    version,
    about = "Authoritative DNS for a consortium's nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the zones of the config (the default command).
    Serve(ServeArgs),
    /// Validate config, zone and members files without serving; prints file:line: reason.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// DNS listen address (UDP and TCP), repeatable; replaces the config's list. Port 0 allowed.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Metrics/admin HTTP address.
    #[arg(long = "http-listen", value_name = "ADDR:PORT")]
    http_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs {
        config: DEFAULT_CONFIG_PATH.into(),
        ..ServeArgs::default()
    })) {
        Command::Serve(args) => serve(args),
        Command::Check { config } => check(&config),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        ExitCode::from(EX_USAGE)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match Snapshot::load(&config) {
        Ok(snapshot) => {
            for zone in snapshot.zones() {
                println!(
                    "{}: serial {}, {} records, {} members, {} pools: OK",
                    zone.origin,
                    zone.serial,
                    zone.records.len(),
                    zone.members.len(),
                    zone.pools.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.len());
            ExitCode::from(EX_DATAERR)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging();
    let mut config = match load_config(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if let Some(http) = args.http_listen {
        config.http_listen = Some(http);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    runtime.block_on(async move {
        let handle = match consortium_dns::app::start(config).await {
            Ok(handle) => handle,
            Err(consortium_dns::app::StartError::Load(errors)) => {
                for e in errors {
                    eprintln!("{e}");
                }
                return ExitCode::from(EX_DATAERR);
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EX_OSERR);
            }
        };
        wait_for_stop_signal().await;
        tracing::info!("shutting down");
        handle.shutdown(Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

//! The `consortium-dns` binary: `serve`, `check`, `status`. A thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consortium_dns::config::{Config, DEFAULT_CONFIG_PATH};
use consortium_dns::snapshot::Snapshot;

mod status;

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
    /// Show pools and members of a running server (from its loopback admin endpoint).
    Status {
        /// The server's admin HTTP address.
        #[arg(
            long = "http-listen",
            value_name = "ADDR:PORT",
            default_value = "127.0.0.1:8053"
        )]
        http_listen: SocketAddr,
        /// Print the raw JSON document instead of tables.
        #[arg(long)]
        json: bool,
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
        Command::Status { http_listen, json } => status::run(http_listen, json),
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
    let config = match load_config(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let overrides = consortium_dns::app::Overrides {
        listen: (!args.listen.is_empty()).then_some(args.listen),
        http_listen: args.http_listen.map(Some),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    runtime.block_on(async move {
        let handle = match consortium_dns::app::start_with(config, overrides).await {
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
        wait_for_stop_signal(&handle).await;
        tracing::info!("shutting down");
        handle.shutdown(Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or SIGINT; SIGHUP meanwhile reloads the zones.
async fn wait_for_stop_signal(handle: &consortium_dns::app::ServerHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hangup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hangup.recv() => {
                handle.control.reload("SIGHUP").await;
            }
        }
    }
}

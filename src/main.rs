//! The `consortium-dns` binary: `serve`, `check`, `status`. A thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consortium_dns::config::{Config, DEFAULT_CONFIG_PATH};
use consortium_dns::sd_notify;

mod ctl;
mod dnssec_cli;
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
    version = consortium_dns::VERSION,
    about = "Authoritative DNS for a consortium's nodes"
)]
struct Cli {
    /// Config file (before or after the command).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: `serve`, with these options.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the zones of the config (the default command).
    Serve(ServeArgs),
    /// Validate config, zone and members files without serving; prints file:line: reason.
    Check,
    /// Show pools and members of a running server (from its loopback admin endpoint). Exit
    /// code 0 all well, 1 the last reload failed, 2 a pool fails open, 3 no answer.
    Status {
        /// The server's admin HTTP address, instead of the config's.
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
        /// Print the raw JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// DNSSEC keys: create them, print the DS records for the parent, show their states.
    #[command(subcommand)]
    Dnssec(DnssecCommand),
    /// Commands to a running server, through its admin endpoint (the config's
    /// `[server] http-listen`).
    #[command(subcommand)]
    Ctl(CtlCommand),
    /// Print the man page (roff) on stdout; the Debian package installs it.
    Manpage,
    /// Print the completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Read the config and every zone file again (or one zone's files) and print the outcome;
    /// exit 0 when the new data is served, 1 when the server keeps the previous data.
    Reload {
        /// Only this zone's files (zone file, members file, keys), under the running config;
        /// without it, the config and every zone.
        zone: Option<String>,
        /// The admin address, instead of the config's `[server] http-listen`.
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
        /// Publish even a change that removes most of a zone (held back otherwise).
        #[arg(long)]
        force: bool,
    },
    /// NOTIFY a zone's secondaries of its current serial now.
    Notify {
        zone: String,
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
    },
    /// Change the running server's log filter (`info`, `debug`, `consortium_dns=debug`...).
    LogLevel {
        level: String,
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
    },
    /// The versions of a zone kept for IXFR and what changed in each.
    History {
        zone: String,
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
    },
    /// Take a member out of every pool it is in (maintenance), whatever its health; kept in
    /// the state file across restarts. Its own name keeps answering.
    Drain {
        /// The member's label (`node1`) or full name.
        member: String,
        /// The zone, when the label is in several.
        #[arg(long)]
        zone: Option<String>,
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
    },
    /// Put a drained member back into its pools (picked as its health allows).
    Undrain {
        member: String,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
    },
    /// Each zone's serial, the last load, and each secondary's last known serial.
    ZoneStatus {
        zone: Option<String>,
        #[arg(long = "http-listen", value_name = "ADDR:PORT")]
        http_listen: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum DnssecCommand {
    /// Write a new key pair into the zone's key directory (default: one CSK, ECDSAP256SHA256).
    Keygen {
        #[arg(long)]
        zone: String,
        #[arg(long, value_enum, default_value_t = dnssec_cli::Algorithm::Ecdsap256sha256)]
        algorithm: dnssec_cli::Algorithm,
        /// A key-signing key (flags 257): the default, which makes a CSK when it is alone.
        #[arg(long, conflicts_with = "zsk")]
        ksk: bool,
        /// A zone-signing key (flags 256).
        #[arg(long)]
        zsk: bool,
    },
    /// Print the DS records (SHA-256) of the zone's active and published KSKs, for the parent.
    Ds {
        #[arg(long)]
        zone: String,
    },
    /// Show each signed zone's keys and states and, from the running server, the earliest
    /// signature expiry.
    Status {
        /// Only this zone.
        #[arg(long)]
        zone: Option<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// DNS listen address (UDP and TCP), repeatable; replaces the config's list. Port 0 allowed.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Metrics/admin HTTP address; "" turns the endpoint off.
    #[arg(long = "http-listen", value_name = "ADDR:PORT", value_parser = admin_listen)]
    http_listen: Option<AdminListen>,
    /// Log format: readable text, or one JSON object per line.
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds to let open TCP queries finish on SIGTERM/SIGINT; a second signal exits at once.
    #[arg(long = "shutdown-grace", value_name = "SECONDS", default_value_t = 5)]
    shutdown_grace: u64,
}

/// `--http-listen` as given: an address, or "" for none (as `http-listen = ""` in the config).
#[derive(Clone, Copy)]
struct AdminListen(Option<SocketAddr>);

fn admin_listen(text: &str) -> Result<AdminListen, String> {
    if text.is_empty() {
        return Ok(AdminListen(None));
    }
    text.parse()
        .map(|addr| AdminListen(Some(addr)))
        .map_err(|_| format!("{text:?} is not ADDR:PORT (or \"\" for no admin endpoint)"))
}

#[derive(clap::ValueEnum, Clone, Copy, Default, PartialEq, Eq)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = parse_command_line();
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve(&config, args),
        Command::Check => check(&config),
        Command::Status { http_listen, json } => match ctl::admin_address_of(&config, http_listen) {
            Ok(addr) => status::run(addr, json),
            Err(reason) => {
                eprintln!("{reason}");
                ExitCode::from(3)
            }
        },
        Command::Dnssec(command) => match command {
            DnssecCommand::Keygen {
                zone, algorithm, zsk, ..
            } => dnssec_cli::keygen(&config, &zone, algorithm, zsk),
            DnssecCommand::Ds { zone } => dnssec_cli::ds(&config, &zone),
            DnssecCommand::Status { zone } => dnssec_cli::status(&config, zone.as_deref()),
        },
        Command::Ctl(CtlCommand::Reload {
            zone,
            http_listen,
            force,
        }) => ctl::reload(&config, http_listen, zone.as_deref(), force),
        Command::Ctl(CtlCommand::Notify { zone, http_listen }) => ctl::notify(&config, http_listen, &zone),
        Command::Ctl(CtlCommand::LogLevel { level, http_listen }) => {
            ctl::log_level(&config, http_listen, &level)
        }
        Command::Ctl(CtlCommand::History { zone, http_listen }) => ctl::history(&config, http_listen, &zone),
        Command::Ctl(CtlCommand::Drain {
            member,
            zone,
            http_listen,
        }) => ctl::drain(&config, http_listen, &member, zone.as_deref(), true),
        Command::Ctl(CtlCommand::Undrain {
            member,
            zone,
            http_listen,
        }) => ctl::drain(&config, http_listen, &member, zone.as_deref(), false),
        Command::Ctl(CtlCommand::ZoneStatus { zone, http_listen }) => {
            ctl::zone_status(&config, http_listen, zone.as_deref())
        }
        Command::Manpage => print_manpage(),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "consortium-dns", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the completion script: {e}");
                    ExitCode::from(EX_OSERR)
                }
            }
        }
    }
}

/// `manpage`: one page for the binary with every command's options in it, as `man
/// consortium-dns` shows it.
fn print_manpage() -> ExitCode {
    use clap::CommandFactory;
    let command = Cli::command().long_about(
        "consortium-dns answers a consortium's zone: one CNAME per member node and shared names \
         picked per query among the healthy members, hot-reloaded when the files change.",
    );
    let page = clap_mangen::Man::new(command.clone());
    let mut out = Vec::new();
    // clap_mangen's own SUBCOMMANDS section points at one page per command; this page holds
    // them all instead.
    let written = page
        .render_title(&mut out)
        .and_then(|()| page.render_name_section(&mut out))
        .and_then(|()| page.render_synopsis_section(&mut out))
        .and_then(|()| page.render_description_section(&mut out))
        .and_then(|()| page.render_options_section(&mut out))
        .and_then(|()| render_subcommands(&command, "consortium-dns", &mut out))
        .and_then(|()| page.render_version_section(&mut out))
        .and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &out));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the man page: {e}");
            ExitCode::from(EX_OSERR)
        }
    }
}

/// Each subcommand as a section of the page (`ctl reload`, `dnssec keygen`...), its options
/// listed: one page to search, as `man knotc` is.
fn render_subcommands(command: &clap::Command, path: &str, out: &mut Vec<u8>) -> std::io::Result<()> {
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{path} {}", sub.get_name());
        let mut section = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut section)?;
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        out.extend_from_slice(
            format!(".SH \"{}\"\n{}\n", name.to_uppercase(), roff_escaped(&about)).as_bytes(),
        );
        // The options go under the command's own heading.
        let text = String::from_utf8_lossy(&section).replacen(".SH OPTIONS\n", "", 1);
        out.extend_from_slice(text.as_bytes());
        render_subcommands(sub, &name, out)?;
    }
    Ok(())
}

/// Text safe in a roff line: a leading `.` or `'` would be read as a request, `\` as an escape.
fn roff_escaped(text: &str) -> String {
    let text = text.replace('\\', "\\e");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

/// The command line, refusing `serve`'s options in front of another command (`consortium-dns
/// --listen ... check` would otherwise ignore them). `--config` is global: it may come before
/// or after the command, as with `knotc -c`.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    let serve_only = ["listen", "http_listen", "log_format", "shutdown_grace"];
    if let Some((name, _)) = matches.subcommand() {
        let given = serve_only
            .iter()
            .find(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine));
        if let Some(id) = given {
            let flag = format!("--{}", id.replace('_', "-"));
            let message = if name == "serve" {
                format!("write {flag} after `serve`, not before it")
            } else {
                format!("{flag} is an option of `serve`, not of `{name}`")
            };
            command
                .error(clap::error::ErrorKind::ArgumentConflict, message)
                .exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // RUST_LOG overrides the default level, e.g. RUST_LOG=consortium_dns=debug; `ctl
    // log-level` changes it while running.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colour only on a terminal: in the journal or a file, escape codes are noise.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    consortium_dns::http::control_log_level(Box::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| format!("bad log filter {level:?}: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    }));
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
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    match consortium_dns::control::load(&config) {
        Ok(snapshot) => {
            for zone in snapshot.zones() {
                println!(
                    "{}: serial {}, {} records, {} members, {} pools: OK",
                    zone.origin,
                    zone.serial,
                    zone.records.len() + zone.members.len(),
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

fn serve(config_path: &std::path::Path, args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let shutdown_grace = args.shutdown_grace;
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let overrides = consortium_dns::app::Overrides {
        listen: (!args.listen.is_empty()).then_some(args.listen),
        http_listen: args.http_listen.map(|AdminListen(addr)| addr),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    runtime.block_on(async move {
        // Handlers first: a SIGTERM or SIGHUP arriving once READY=1 is out (systemd may send
        // either at once) must not meet the default action, which kills the process.
        let mut signals = match StopSignals::install() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return ExitCode::from(EX_OSERR);
            }
        };
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
        // Zones loaded, sockets bound, first query answerable: say what is served, and tell
        // systemd (Type=notify).
        tracing::info!(version = consortium_dns::VERSION, listen = ?handle.dns_addrs, "consortium-dns serving");
        for warning in handle.config.warnings() {
            tracing::warn!("{warning}");
        }
        for zone in handle.shared.snapshot.load().zones() {
            tracing::info!(
                zone = %zone.origin,
                serial = zone.serial,
                records = zone.records.len(),
                members = zone.members.len(),
                pools = zone.pools.len(),
                signed = zone.dnssec.is_some(),
                "zone loaded"
            );
        }
        let zones = handle.shared.snapshot.load().zones().len();
        sd_notify::notify_or_log(&format!("READY=1\nSTATUS=serving {zones} zone(s)"));
        signals.wait_for_stop(&handle).await;
        tracing::info!("shutting down; a second signal exits at once");
        sd_notify::notify_or_log("STOPPING=1");
        let grace = Duration::from_secs(shutdown_grace);
        tokio::select! {
            _ = handle.shutdown(grace) => {}
            _ = signals.stop() => {
                tracing::warn!("second signal: exiting now");
                std::process::exit(1);
            }
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGTERM, SIGINT and SIGHUP, caught from before READY=1 until exit.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next SIGTERM or SIGINT (one delivered since the last call counts).
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP meanwhile reloads the zones.
    async fn wait_for_stop(&mut self, handle: &consortium_dns::app::ServerHandle) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => {
                    sd_notify::notify_or_log("RELOADING=1");
                    let report = handle.control.reload("SIGHUP").await;
                    let status = if report.ok { "reloaded" } else { "reload failed, serving previous data" };
                    sd_notify::notify_or_log(&format!("READY=1\nSTATUS={status}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_listen_on_the_command_line_may_be_off() {
        assert!(matches!(admin_listen(""), Ok(AdminListen(None))));
        assert!(matches!(admin_listen("127.0.0.1:8053"), Ok(AdminListen(Some(_)))));
        assert!(admin_listen("nope").is_err());
        let cli = Cli::try_parse_from(["consortium-dns", "serve", "--http-listen", ""]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Serve(ServeArgs {
                http_listen: Some(AdminListen(None)),
                ..
            }))
        ));
    }
}

//! The `switchboard` binary: parses the command line, loads and layers the configuration
//! (defaults → file → environment → flags), sets up logging and signals, and runs the gateway.
//! Everything else lives in the `switchboard` library.

mod engine;
mod log_writer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::config::{Config, LogFormat, Secret, TokenAlgorithm, GENERATED_CONFIG};
use switchboard::{CancellationToken, Gateway};

/// The HS256 secret `--dev` uses when none is configured, so `switchboard token --dev` can mint
/// tokens the dev server accepts. Announced at start; never valid outside `--dev`.
const DEV_SECRET: &str = "switchboard-dev-secret-do-not-use-in-production";

/// Switchboard: a real-time WebSocket gateway.
#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard: a real-time WebSocket gateway",
    after_help = "Quick start: switchboard serve --dev   (then see README.md for a tour)\n\
                  Configuration precedence: flags > SWITCHBOARD_* environment > --config file > defaults;\n\
                  `switchboard genconfig` prints every option with its default (docs/configuration.md);\n\
                  backend hooks ([hooks]: connect by session cookie, subscribe, publish, refresh, rpc) are\n\
                  set in the file only (docs/hooks.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (memory broker, no other service needed).
    Serve(ServeArgs),
    /// Print a commented configuration file with every option and its default.
    Genconfig {
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check a configuration file (with the environment applied) and exit.
    Checkconfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Mint an HS256 token with the configured secret (for development and tests).
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 1h, 30m, 0s for no expiry.
        // Hyphen values are taken so that `--ttl -5s` reaches `ttl_secs` and gets a message
        // about the lifetime instead of clap's "unexpected argument '-5'".
        #[arg(long, default_value = "1h", allow_hyphen_values = true)]
        ttl: String,
        /// Read the secret from this configuration file (the environment applies too).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Use the development secret that `serve --dev` uses when none is configured.
        #[arg(long)]
        dev: bool,
        /// Make a subscription token for this one channel (client protocol) instead of a
        /// connection token.
        #[arg(long)]
        channel: Option<String>,
        /// Channels the server subscribes the connection to at connect (client protocol);
        /// repeat or separate with commas.
        #[arg(long = "subscribe", value_delimiter = ',')]
        subscribe: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8000; env: SWITCHBOARD_LISTEN].
    #[arg(long)]
    listen: Option<String>,
    /// TOML configuration file (see `switchboard genconfig`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Development mode: anonymous clients, an open default channel namespace (subscribe,
    /// publish, presence, history with recovery), /ws echo on, any localhost origin, pretty
    /// logs, a built-in token secret and an open API when none are configured. Never in
    /// production.
    #[arg(long)]
    dev: bool,
    /// Log format: json or pretty [default: json; pretty with --dev].
    #[arg(long)]
    log_format: Option<String>,
    /// Log filter, e.g. info or switchboard=debug [default: info].
    #[arg(long)]
    log_level: Option<String>,
}

/// Defaults, then the file, then `SWITCHBOARD_*` variables.
fn load(file: Option<&PathBuf>) -> anyhow::Result<Config> {
    let mut config = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(std::env::vars())?;
    Ok(config)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid value for log.level: {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer::BufferedStderr::install()?);
    match config.resolve().log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load(args.config.as_ref())?;
    if let Some(listen) = &args.listen {
        config.set("server.listen", listen, "--listen")?;
    }
    if args.dev {
        config.server.dev = true;
    }
    if let Some(format) = &args.log_format {
        config.set("log.format", format, "--log-format")?;
    }
    if let Some(level) = &args.log_level {
        config.set("log.level", level, "--log-level")?;
    }
    let dev_secret = config.server.dev
        && config.token.algorithm == TokenAlgorithm::HS256
        && config.token.hmac_secret.is_empty();
    if dev_secret {
        config.token.hmac_secret = Secret(DEV_SECRET.to_owned());
    }
    init_logging(&config)?;
    if dev_secret {
        tracing::warn!(event = "dev_mode", "--dev: tokens are checked with the built-in development secret; mint one with `switchboard token --dev --user ID`");
    }
    let broker = engine::broker_for(&config)?;
    let node_name = config
        .node
        .name
        .get_or_insert_with(Gateway::default_node_name)
        .clone();
    let ingest = engine::ingest_for(&config, &node_name)?;
    let mut gateway = Gateway::bind_with_broker(config, broker).await?;
    if let Some(source) = ingest {
        gateway = gateway.with_ingest(source);
    }
    let addr = gateway.local_addr()?;
    tracing::info!(event = "listening", addr = %addr, "switchboard listening on http://{addr}");
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    gateway.run(shutdown).await;
    tracing::info!(event = "shutdown", phase = "exit", "switchboard stopped");
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            event = "signal_setup_failed",
            "cannot listen for SIGTERM/SIGINT"
        );
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        event = "shutdown",
        phase = "signal",
        signal = name,
        "shutdown requested"
    );
    shutdown.cancel();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(args))
        }
        Command::Genconfig { output: Some(path) } => std::fs::write(&path, GENERATED_CONFIG)
            .with_context(|| format!("cannot write {}", path.display())),
        Command::Genconfig { output: None } => {
            print!("{GENERATED_CONFIG}");
            Ok(())
        }
        Command::Checkconfig { file } => {
            let config = load(Some(&file))?;
            config.validate()?;
            switchboard::auth::TokenVerifier::from_config(&config.token)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Token {
            user,
            ttl,
            config,
            dev,
            channel,
            subscribe,
        } => {
            let config = load(config.as_ref())?;
            let ttl = ttl_secs(&ttl)?;
            let secret = if config.token.hmac_secret.is_empty() && dev {
                DEV_SECRET
            } else {
                &config.token.hmac_secret.0
            };
            if secret.is_empty() {
                anyhow::bail!("no token.hmac_secret configured: set SWITCHBOARD_TOKEN_HMAC_SECRET, pass --config, or use --dev");
            }
            let claims = switchboard::auth::Claims {
                sub: user,
                exp: (ttl > 0).then(|| switchboard::auth::unix_now() + ttl),
                channels: subscribe,
                channel,
                info: None,
            };
            let token = switchboard::auth::mint_claims_hs256(secret, &claims)
                .map_err(anyhow::Error::msg)?;
            println!("{token}");
            Ok(())
        }
    }
}

/// A token lifetime in seconds from `--ttl` (0: no expiry).
fn ttl_secs(text: &str) -> anyhow::Result<u64> {
    let usage = "a token's lifetime is a positive duration such as --ttl 5m, --ttl 1h or \
                 --ttl 7d (--ttl 0s for a token that never expires)";
    if text.trim_start().starts_with('-') {
        anyhow::bail!("--ttl {text}: {usage}");
    }
    // Parsed as a duration setting would be, so --ttl takes exactly what config files take.
    let mut probe = Config::default();
    if probe.set("server.shutdown_drain", text, "--ttl").is_err() {
        anyhow::bail!("--ttl {text:?} is not a duration: {usage}");
    }
    Ok(probe.server.shutdown_drain.as_secs())
}

/// The error and its causes, each said once: a cause whose text its context already holds
/// (an error type that shows its source in its own message) is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn main() -> ExitCode {
    let outcome = run(Cli::parse());
    log_writer::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

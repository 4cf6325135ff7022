//! The `lifeline` command: `serve` (the default), `worker`, `migrate`, `callbacks …`.

use clap::{Parser, Subcommand};

use lifeline::config::{Config, ProcessSettings, redact_url};
use lifeline::ops::callbacks_cli::{self, CallbacksCommand};
use lifeline::ops::staff_cli::{self, StaffCommand};
use lifeline::worker::Worker;
use lifeline::{Server, store, telemetry};

#[derive(Parser)]
#[command(
    name = "lifeline",
    version,
    about = "Durable tool calls for voice-AI telephony"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    process: ProcessSettings,
    /// Log format: json (default) or pretty.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", global = true)]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the WebSocket and HTTP endpoints (the default).
    Serve,
    /// Deliver callback requests and send alerts (without serving), until SIGTERM.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Look at and act on callback requests (operators).
    Callbacks {
        #[command(subcommand)]
        command: CallbacksCommand,
    },
    /// Dashboard accounts (passwords are read from standard input).
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Exit 0 if the local server answers `GET /healthz` (for container health checks).
    Healthcheck {
        /// URL to check; default `http://127.0.0.1:$PORT/healthz`.
        #[arg(long)]
        url: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = &cli.command {
        let url = url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}/healthz", cli.process.port));
        return healthcheck(&url).await;
    }
    if let Some(Command::Callbacks { command }) = cli.command {
        // Operators read the output: no JSON logs on top of it.
        let store = store::connect(&cli.process.database_url).await?;
        store.migrate().await?;
        let code = callbacks_cli::run(store.as_ref(), command, &mut std::io::stdout()).await;
        std::process::exit(code);
    }
    if let Some(Command::Staff { command }) = cli.command {
        let store = match command {
            StaffCommand::Hash => None,
            StaffCommand::Add { .. } | StaffCommand::Remove { .. } => {
                let store = store::connect(&cli.process.database_url).await?;
                store.migrate().await?;
                Some(store)
            }
        };
        let code = staff_cli::run(
            store.as_deref(),
            command,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout(),
        )
        .await;
        std::process::exit(code);
    }
    let _telemetry = telemetry::init(&cli.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck { .. } | Command::Callbacks { .. } | Command::Staff { .. } => {
            unreachable!("handled above")
        }
        Command::Worker => {
            let config = load_config(&cli.process);
            let signal = shutdown_signal()?;
            let store =
                store::connect_with_pool(&config.database_url, config.database_max_connections)
                    .await?;
            store.migrate().await?;
            if config.database_url.starts_with("sqlite:") {
                tracing::warn!(
                    "a separate worker on SQLite learns of new requests only by polling \
                     (worker.poll_interval_ms); the worker inside `lifeline serve` is woken at once"
                );
            }
            let worker = Worker::new(std::sync::Arc::new(config), store)?;
            tracing::info!(worker = %worker.id(), "lifeline worker running");
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let running = tokio::spawn(worker.run(stopped));
            signal.await;
            tracing::info!("shutting down");
            let _ = stop.send(true);
            running.await?;
            Ok(())
        }
        Command::Migrate => {
            let store = store::connect(&cli.process.database_url).await?;
            store.migrate().await?;
            tracing::info!(database = %redact_url(&cli.process.database_url), "migrations applied");
            Ok(())
        }
        Command::Serve => {
            let config = load_config(&cli.process);
            if config.tenants.is_empty() {
                tracing::warn!(
                    "no tenants configured: every call will be refused (set LIFELINE_CONFIG)"
                );
            }
            let database = redact_url(&config.database_url);
            let tenants = config.tenants.len();
            // Listen before serving: a SIGTERM that arrives during start-up must still mean
            // a graceful stop, not the default action (death).
            let signal = shutdown_signal()?;
            let server = Server::start(config).await?;
            tracing::info!(addr = %server.addr, %database, tenants, "lifeline serving");
            let stop = server.shutdown_handle();
            tokio::spawn(async move {
                signal.await;
                tracing::info!("shutting down");
                let _ = stop.send(true);
            });
            server.wait().await
        }
    }
}

/// The configuration, or exit 2 with every problem listed.
fn load_config(process: &ProcessSettings) -> Config {
    match Config::load(process) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?
        .get(url)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(())
}

/// A future that resolves on SIGTERM or SIGINT; the handlers are installed when it is created.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

//! The `lifeline` command: `serve` (the default), `worker`, `migrate`, `callbacks …`, `staff …`,
//! `tools schema`, `backup`, `prune`, `healthcheck`.
//!
//! Settings come from the environment; a `.env` file in the current directory fills in what the
//! environment does not set (the environment wins). A setting that cannot work ends the process
//! at once with one message that names it: exit code 2 for the configuration, 1 for anything
//! else (a database that cannot be opened, an address in use).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use lifeline::config::{CONFIG_TOML_VAR, Config, ProcessSettings, redact_url};
use lifeline::ops::callbacks_cli::{self, CallbacksCommand};
use lifeline::ops::prune::{self, PruneArgs};
use lifeline::ops::staff_cli::{self, StaffCommand};
use lifeline::ops::tools_cli::{self, ToolsCommand};
use lifeline::worker::Worker;
use lifeline::{Server, store, telemetry};
use secrecy::ExposeSecret;

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
    /// The tools lifeline serves, as Ultravox declarations (for an Ultravox agent).
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Copy the SQLite database to FILE while lifeline keeps running (`VACUUM INTO`).
    Backup {
        /// The new file (never overwritten).
        file: PathBuf,
    },
    /// Delete history older than --older-than: tool-call logs, call events, and callback
    /// requests delivered or resolved (never what is still in the queue or under way).
    Prune(PruneArgs),
    /// Exit 0 if the local server answers `GET /healthz` (for container health checks).
    Healthcheck {
        /// URL to check; default `http://127.0.0.1:$PORT/healthz`.
        #[arg(long)]
        url: Option<String>,
    },
}

/// What happened to `./.env`.
enum DotEnv {
    Read(usize),
    Absent,
}

/// Reads `./.env` into the environment, without replacing variables that are already set.
/// Runs before any thread exists (changing the environment is only sound then).
fn read_dotenv() -> Result<DotEnv, String> {
    let path = std::path::Path::new(".env");
    if !path.is_file() {
        return Ok(DotEnv::Absent);
    }
    let items = dotenvy::from_path_iter(path).map_err(|e| format!(".env: {e}"))?;
    let mut read = 0;
    for item in items {
        let (key, value) = item.map_err(|e| format!(".env: {e}"))?;
        if std::env::var_os(&key).is_none() {
            // SAFETY: called from `main` before the runtime (or any other thread) starts.
            unsafe { std::env::set_var(&key, value) };
            read += 1;
        }
    }
    Ok(DotEnv::Read(read))
}

/// mimalloc instead of glibc's allocator: perf put a fifth of the call path's CPU in glibc's
/// malloc and free (`_int_malloc`, `malloc_consolidate`), as every frame, row and log line
/// allocates.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let dotenv = match read_dotenv() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("lifeline: cannot read settings from {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lifeline: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, dotenv))
}

/// Ends the process with `message` on standard error (and in the logs, when they are on).
fn failed(code: u8, message: impl std::fmt::Display) -> ExitCode {
    let message = message.to_string();
    tracing::error!(error = %message, "lifeline cannot run");
    eprintln!("lifeline: error: {message}");
    ExitCode::from(code)
}

async fn run(cli: Cli, dotenv: DotEnv) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Serve);
    let process = cli.process;
    match command {
        Command::Healthcheck { url } => {
            let url = url.unwrap_or_else(|| format!("http://127.0.0.1:{}/healthz", process.port));
            match healthcheck(&url).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(1, format!("{e:#}")),
            }
        }
        Command::Tools { command } => exit_code(tools_cli::run(command, &mut std::io::stdout())),
        Command::Backup { file } => {
            match lifeline::ops::backup::sqlite_backup(process.database_url.expose_secret(), &file)
                .await
            {
                Ok(bytes) => {
                    println!("backup written to {} ({bytes} bytes)", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => failed(1, e),
            }
        }
        // Operators read the output of these: no JSON logs on top of it.
        Command::Callbacks { command } => {
            let store = match open_store(process.database_url.expose_secret(), 16).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            exit_code(callbacks_cli::run(store.as_ref(), command, &mut std::io::stdout()).await)
        }
        Command::Prune(args) => {
            let store = match open_store(process.database_url.expose_secret(), 4).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut out = std::io::stdout();
            exit_code(prune::run(store.as_ref(), &args, chrono::Utc::now(), &mut out).await)
        }
        Command::Staff { command } => staff(&process, command).await,
        Command::Migrate => {
            let _telemetry = telemetry::init(&cli.log_format);
            log_dotenv(&dotenv);
            if open_store(process.database_url.expose_secret(), 16)
                .await
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            tracing::info!(database = %redact_url(process.database_url.expose_secret()), "migrations applied");
            ExitCode::SUCCESS
        }
        Command::Worker => {
            let _telemetry = telemetry::init(&cli.log_format);
            log_dotenv(&dotenv);
            let config = match Config::load(&process) {
                Ok(c) => c,
                Err(e) => return config_failed(e),
            };
            worker(config).await
        }
        Command::Serve => {
            let _telemetry = telemetry::init(&cli.log_format);
            log_dotenv(&dotenv);
            let config = match Config::load(&process) {
                Ok(c) => c,
                Err(e) => return config_failed(e),
            };
            // A tenant whose Jambonz ack cannot fit one frame would get no call answered.
            let problems = lifeline::ingress::jambonz::frame_check::session_ack_problems(&config);
            if !problems.is_empty() {
                return config_failed(lifeline::config::ConfigError(problems));
            }
            serve(config, Config::source_label(&process)).await
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn config_failed(e: lifeline::config::ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn log_dotenv(dotenv: &DotEnv) {
    match dotenv {
        DotEnv::Read(n) => tracing::info!(
            variables = n,
            "settings read from ./.env (variables already in the environment win)"
        ),
        DotEnv::Absent => {}
    }
}

/// Opens and migrates the database, or reports (exit 1) why it cannot be.
async fn open_store(
    url: &str,
    max_connections: u32,
) -> Result<std::sync::Arc<dyn store::Store>, ExitCode> {
    let store = store::connect_with_pool(url, max_connections)
        .await
        .map_err(|e| failed(1, e))?;
    store
        .migrate()
        .await
        .map_err(|e| failed(1, format!("migrating {}: {e}", redact_url(url))))?;
    Ok(store)
}

async fn staff(process: &ProcessSettings, command: StaffCommand) -> ExitCode {
    if let StaffCommand::Add {
        tenant: Some(tenant),
        ..
    } = &command
    {
        // The clinic must be one the service answers for: a typo would make an account that
        // sees nothing.
        let source = Config::source_label(process);
        let config = match source {
            None => None,
            Some(_) => match Config::load(process) {
                Ok(c) => Some(c),
                Err(e) => return config_failed(e),
            },
        };
        let ids: Vec<&str> = config
            .iter()
            .flat_map(|c| c.tenants.iter().map(|t| t.id.as_str()))
            .collect();
        let known = source.as_deref().map(|s| (ids.as_slice(), s));
        if let Err(e) = staff_cli::check_clinic(tenant, known) {
            eprintln!("lifeline staff: {e}");
            return ExitCode::FAILURE;
        }
    }
    let store = match command {
        StaffCommand::Hash => None,
        StaffCommand::Add { .. } | StaffCommand::Remove { .. } => {
            match open_store(process.database_url.expose_secret(), 16).await {
                Ok(s) => Some(s),
                Err(code) => return code,
            }
        }
    };
    exit_code(
        staff_cli::run(
            store.as_deref(),
            command,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout(),
        )
        .await,
    )
}

async fn worker(config: Config) -> ExitCode {
    let signal = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => return failed(1, format!("cannot handle signals: {e}")),
    };
    // A worker process has only the worker's budget of connections.
    let store = match open_store(
        config.database_url.expose_secret(),
        config.database_worker_connections,
    )
    .await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    if config.database_url.expose_secret().starts_with("sqlite:") {
        tracing::warn!(
            "a separate worker on SQLite learns of new requests only by polling \
             (worker.poll_interval_ms); the worker inside `lifeline serve` is woken at once"
        );
    }
    let worker = match Worker::new(std::sync::Arc::new(config), store) {
        Ok(w) => w,
        Err(e) => return failed(1, format!("{e:#}")),
    };
    tracing::info!(worker = %worker.id(), "lifeline worker running");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));
    signal.await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    match running.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(1, format!("the worker failed: {e}")),
    }
}

async fn serve(config: Config, source: Option<String>) -> ExitCode {
    if config.tenants.is_empty() {
        // A service that can serve nobody must not look ready to a load balancer.
        return failed(
            2,
            format!(
                "no clinics configured, so every call would be refused: set LIFELINE_CONFIG to \
                 a TOML file or {CONFIG_TOML_VAR} to its text (to try lifeline: \
                 LIFELINE_CONFIG=fixtures/demo.toml){}",
                source
                    .map(|s| format!("; {s} has no [[tenants]]"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(demo) = &config.demo {
        tracing::warn!(
            staff = %demo.staff_username,
            config = source.as_deref().unwrap_or("-"),
            "DEMO MODE: the dashboard (/admin) accepts the [demo] login from the configuration \
             file, whose password is public; never run this configuration in production"
        );
    }
    let database = redact_url(config.database_url.expose_secret());
    let tenants = config.tenants.len();
    // Listen before serving: a SIGTERM that arrives during start-up must still mean a graceful
    // stop, not the default action (death).
    let signal = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => return failed(1, format!("cannot handle signals: {e}")),
    };
    // Before the listener exists: its connection cap is derived from this limit.
    lifeline::serve::raise_open_files_limit();
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => return failed(1, format!("{e:#}")),
    };
    tracing::info!(addr = %server.addr, %database, tenants, "lifeline serving");
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    match server.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(1, format!("{e:#}")),
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

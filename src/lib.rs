//! lifeline: durable tool calls for voice-AI telephony.
//!
//! A tool call flows one way: an ingress adapter (`ingress::jambonz`) authenticates and turns the
//! wire message into a `domain::ToolInvocation`; `tools::pipeline` validates it, logs it durably
//! (`store`), rate-limits, runs the tool (`tools::collect_info`, `tools::transfer`,
//! `tools::hang_up`), acting on the call through `telephony::CallControl`, records the outcome;
//! the adapter answers in its own format (`protocol`).

pub mod breaker;
pub mod config;
pub mod domain;
pub mod ingress;
pub mod ops;
pub mod password;
pub mod phone;
pub mod prompt_context;
pub mod protocol;
pub mod reconciler;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod telephony;
pub mod tools;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use config::Config;
use store::Store;
use tools::pipeline::Pipeline;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The call path's store: the database within a budget, else the journal.
    pub store: Arc<dyn Store>,
    /// The same store, for what only it knows (the journal's status, for `/readyz`).
    pub journal: Arc<store::resilient::ResilientStore>,
    pub pipeline: Arc<Pipeline>,
    /// The Twilio REST client, when a Twilio account is configured.
    pub twilio: Option<Arc<telephony::twilio::TwilioClient>>,
    /// The Ultravox REST client (call creation, agent prompt variables).
    pub ultravox_api: Arc<telephony::ultravox::UltravoxApi>,
    /// Flips to true when the process is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Call sockets, and when they must go.
    pub lifecycle: Lifecycle,
    /// Which socket each live Jambonz call is on.
    pub jambonz_calls: Arc<ingress::jambonz::CallSockets>,
}

/// What a stopping process waits for beyond the HTTP server's own graceful shutdown
/// ([`serve::serve`]), which waits neither for upgraded WebSockets nor for the tool tasks they
/// spawn.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Cancelled once in-flight tool calls are done (or the grace period ran out): call sockets
    /// then send what they still have queued and close with 1001, so Jambonz reconnects to
    /// another instance and the call goes on.
    pub close_sockets: CancellationToken,
    /// The call sockets (Jambonz, Ultravox data connections).
    pub sockets: TaskTracker,
}

/// The part of the grace period kept for closing sockets (each waits for the peer's Close
/// reply), at most half of it.
const SOCKET_CLOSE_BUDGET: Duration = Duration::from_secs(3);

/// The HTTP and WebSocket routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/jambonz", get(ingress::jambonz::upgrade))
        .merge(ingress::twilio::routes())
        .merge(ingress::ultravox::routes())
        .merge(ops::admin::routes())
        .route("/healthz", get(ops::health::healthz))
        .route("/readyz", get(ops::health::readyz))
        .merge(ops::metrics::routes())
        .layer(RequestBodyLimitLayer::new(256 * 1024))
        .layer(TraceLayer::new_for_http())
        .layer(from_fn_with_state(
            state.clone(),
            ops::headers::security_headers,
        ))
        .with_state(state)
}

/// A running lifeline: its address and its state, for `main` and for tests.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    /// The in-process delivery worker, unless `worker.in_process` is off.
    worker: Option<JoinHandle<()>>,
    /// Ends transfers and invocations whose owner went away.
    reconciler: JoinHandle<()>,
    /// Replays the journal when the database answers again.
    journal: JoinHandle<()>,
}

impl Server {
    /// Connects the store (the call path's pool and, with an in-process worker, the worker's:
    /// see [`store::connect_split`]), migrates, binds (port 0 picks a free port) and serves.
    ///
    /// A PostgreSQL database that cannot be reached stops the start, unless the journal holds
    /// records of an earlier process (killed during an outage): then the process starts
    /// degraded, serving calls through the journal, and migrates and replays once the database
    /// answers. (A new deployment with a wrong `DATABASE_URL` still fails at once.)
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let url = config.database_url.expose_secret();
        let max = config.database_max_connections;
        let opened = async {
            let stores = store::connect_split(
                url,
                max,
                config
                    .worker
                    .in_process
                    .then_some(config.database_worker_connections),
            )
            .await?;
            stores.calls.migrate().await?;
            Ok::<_, store::StoreError>(stores)
        }
        .await;
        match opened {
            Ok(stores) => {
                let worker = stores.worker.unwrap_or_else(|| stores.calls.clone());
                Self::start_inner(config, stores.calls, worker, false).await
            }
            Err(why)
                if url.starts_with("postgres")
                    && store::journal::holds_records(&config.journal.dir) =>
            {
                tracing::error!(
                    reason = %why,
                    journal = %config.journal.dir.display(),
                    "the database cannot be used and the journal holds records of an earlier \
                     process: starting degraded (calls are served through the journal; \
                     migrations and the replay run when the database answers)"
                );
                let store = store::connect_lazy(url, max)?;
                Self::start_inner(config, store.clone(), store, true).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Serves with an already opened and migrated store, which the worker shares.
    pub async fn start_with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        Self::start_inner(config, store.clone(), store, false).await
    }

    /// Serves with already opened and migrated stores: `store` for the call path, `worker_store`
    /// (the same database, its own connections) for the in-process delivery worker.
    pub async fn start_with_stores(
        config: Config,
        store: Arc<dyn Store>,
        worker_store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        Self::start_inner(config, store, worker_store, false).await
    }

    /// `degraded`: the database could not be reached (or migrated) at start.
    async fn start_inner(
        config: Config,
        store: Arc<dyn Store>,
        worker_store: Arc<dyn Store>,
        degraded: bool,
    ) -> anyhow::Result<Self> {
        ops::metrics::install();
        let listener = TcpListener::bind((config.bind, config.port))
            .await
            .map_err(|e| bind_error(config.bind, config.port, e))?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .user_agent(concat!("lifeline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // The delivery worker reads and writes the database itself; the call path goes through
        // the journal when the database cannot commit in time.
        let database = store;
        let journal =
            store::resilient::ResilientStore::open(database.clone(), config.journal.clone())
                .map_err(|e| anyhow::anyhow!("cannot open the journal: {e}"))?;
        if degraded {
            journal.started_without_database();
        }
        let store: Arc<dyn Store> = journal.clone();
        let pipeline = Arc::new(Pipeline::new(store.clone(), config.limits.clone()));
        let twilio = config.twilio.as_ref().map(|settings| {
            Arc::new(telephony::twilio::TwilioClient::new(
                settings,
                http.clone(),
                Arc::new(breaker::CircuitBreaker::new("twilio")),
            ))
        });
        let http_for_alerts = http.clone();
        let ultravox_api = Arc::new(telephony::ultravox::UltravoxApi::new(
            config.ultravox.api_base.clone(),
            http,
            Arc::new(breaker::CircuitBreaker::new("ultravox")),
            config.ultravox.agent_cache_ttl,
        ));
        let config = Arc::new(config);
        journal.set_alerts(Arc::new(worker::direct_alerts::ChannelAlerts::new(
            http_for_alerts,
            config.clone(),
        )));
        let journal_task = tokio::spawn(journal.clone().run(shutdown_rx.clone()));
        let worker = if config.worker.in_process {
            let worker = worker::Worker::new(config.clone(), worker_store)?;
            Some(tokio::spawn(worker.run(shutdown_rx.clone())))
        } else {
            None
        };
        let reconciler = tokio::spawn(
            reconciler::Reconciler::new(store.clone(), config.clone(), pipeline.clone())
                .run(shutdown_rx.clone()),
        );
        let state = AppState {
            config,
            store,
            journal,
            pipeline,
            twilio,
            ultravox_api,
            shutdown: shutdown_rx.clone(),
            lifecycle: Lifecycle::default(),
            jambonz_calls: Arc::new(ingress::jambonz::CallSockets::default()),
        };
        let app = router(state.clone());
        let connections = state.config.connections.clone();
        let mut stop = shutdown_rx;
        // Our own accept loop (header-read timeout, connection caps); see `serve`.
        let task = tokio::spawn(async move {
            serve::serve(listener, app, &connections, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        });
        Ok(Self {
            addr,
            state,
            shutdown: shutdown_tx,
            task,
            worker,
            reconciler,
            journal: journal_task,
        })
    }

    /// Stops gracefully (see [`Server::wait`]).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server stops, then stops gracefully: no new connections; in-flight HTTP
    /// requests answered; in-flight tool calls finished and their answers and commands queued
    /// on their call's socket (within `shutdown.grace_secs`); then call sockets closed with
    /// 1001, their Close handshake completed, so Jambonz reconnects to another instance; the
    /// worker finishes its in-flight deliveries.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.task.await;
        // However the server stopped, everything else stops with it.
        let _ = self.shutdown.send(true);
        let started = tokio::time::Instant::now();
        let grace = self.state.config.lifecycle.shutdown_grace;
        let close_budget = SOCKET_CLOSE_BUDGET.min(grace / 2);
        let tools = self.state.pipeline.tasks();
        tools.close();
        if tokio::time::timeout_at(started + (grace - close_budget), tools.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = tools.len(),
                "shutdown grace period over with tool calls still running; the reconciler \
                 of another instance ends what they leave"
            );
        }
        let lifecycle = &self.state.lifecycle;
        lifecycle.close_sockets.cancel();
        lifecycle.sockets.close();
        if tokio::time::timeout_at(started + grace, lifecycle.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = lifecycle.sockets.len(),
                "call sockets still open at the end of the grace period"
            );
        }
        let _ = self.reconciler.await;
        // Last: the sockets' final writes may have gone to the journal.
        let _ = self.journal.await;
        self.state.journal.finish().await;
        if let Some(worker) = self.worker {
            worker.await?;
        }
        served??;
        Ok(())
    }

    /// A handle that can trigger the shutdown from elsewhere (a signal handler).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Why the listening address cannot be used, naming it and the settings that choose it.
fn bind_error(ip: std::net::IpAddr, port: u16, e: std::io::Error) -> anyhow::Error {
    let addr = SocketAddr::new(ip, port);
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process listens there (an older lifeline?): stop it, or choose another PORT"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: choose a PORT of 1024 or more"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "this machine has no such address: fix LIFELINE_BIND (0.0.0.0 listens on every address)"
        }
        _ => "check PORT and LIFELINE_BIND",
    };
    anyhow::anyhow!("cannot listen on {addr}: {e}; {hint}")
}

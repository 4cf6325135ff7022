//! Logs: JSON lines through tracing (or human-readable with `LOG_FORMAT=pretty`), filtered by
//! `RUST_LOG` (default `info`). Phone numbers are masked and concerns never logged at info level.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once. Lines are written by a background thread, so a slow
/// stdout never stalls a call; keep the returned guard alive until exit to flush them.
pub fn init(format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    guard
}

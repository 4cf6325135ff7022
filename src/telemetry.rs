//! Logs: JSON lines through tracing (or human-readable with `LOG_FORMAT=pretty`), filtered by
//! `RUST_LOG` (default `info`). Phone numbers are masked and concerns never logged at info level.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
}

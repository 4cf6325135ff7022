//! Logs: JSON lines through tracing (or human-readable with `LOG_FORMAT=pretty`), filtered by
//! `RUST_LOG` (default `info`). Phone numbers are masked and concerns never logged at info level.
//!
//! With `SENTRY_DSN` set, error-level events are also reported to Sentry, carrying the ids of
//! the spans they happened in (call, tool invocation), with info and warning lines before them
//! as breadcrumbs: the same masked lines the logs hold. Nothing else is sent: no request data,
//! no client addresses (`send_default_pii` is off), no performance traces.

pub mod line_buffer;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// What [`init`] set up; keep it alive until exit: dropping it flushes the log lines and the
/// Sentry events still buffered.
pub struct Telemetry {
    _log: line_buffer::FlushGuard,
    _sentry: Option<sentry::ClientInitGuard>,
}

/// Installs the global subscriber once, and Sentry reporting when `SENTRY_DSN` is set. Lines
/// are gathered in memory and written by a background thread a few times a second, so a slow
/// stdout never stalls a call, and a line does not wake a thread (see [`line_buffer`]).
pub fn init(format: &str) -> Telemetry {
    let (writer, guard) = line_buffer::spawn(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let sentry = sentry_from_env();
    let fmt = if format == "pretty" {
        tracing_subscriber::fmt::layer().with_writer(writer).boxed()
    } else {
        json_lines(writer).boxed()
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(sentry.is_some().then(sentry_layers))
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    if let Some(client) = &sentry {
        tracing::info!(
            environment = client.options().environment.as_deref().unwrap_or(""),
            "errors are reported to Sentry"
        );
    }
    Telemetry {
        _log: guard,
        _sentry: sentry,
    }
}

/// The JSON lines [`init`] writes (one object per line: `timestamp`, `level`, `target`, the
/// event's `fields` and the current `span`'s fields and `name`), to `writer`; tests capture the
/// lines with it.
pub fn json_lines<S, W>(writer: W) -> json_subscriber::fmt::Layer<S, W>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    // json-subscriber keeps each span's fields as JSON, where tracing-subscriber's JSON
    // formatter parses them back on every line (a tenth of the server's CPU at 1,000 tool
    // calls/s was the log line; see the README's Performance section).
    json_subscriber::fmt::layer()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
}

/// Starts the Sentry client named by `SENTRY_DSN` (`None` when unset, or when it is not a DSN:
/// a typo there must not stop the service).
fn sentry_from_env() -> Option<sentry::ClientInitGuard> {
    let dsn = std::env::var("SENTRY_DSN")
        .ok()
        .filter(|d| !d.trim().is_empty())?;
    match sentry_options(dsn.trim()) {
        Ok(options) => Some(sentry::init(options)),
        Err(e) => {
            eprintln!("SENTRY_DSN is not a valid Sentry DSN ({e}); errors are not reported");
            None
        }
    }
}

/// The client options: this release, and no personal data sent by default (the environment
/// comes from `SENTRY_ENVIRONMENT`, read by the SDK).
fn sentry_options(dsn: &str) -> Result<sentry::ClientOptions, sentry::types::ParseDsnError> {
    let mut options = sentry::ClientOptions::new().send_default_pii(false);
    options.dsn = Some(dsn.parse()?);
    options.release = sentry::release_name!();
    // Errors only: no performance traces.
    options.traces_sampling_strategy = sentry::TracesSamplingStrategy::Disabled;
    Ok(options)
}

/// Error-level events become Sentry events, with the fields of the spans around them (the
/// span layer records them; with a traces sample rate of 0 it sends nothing itself); info and
/// warning lines become breadcrumbs.
fn sentry_layers<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer, SpanLayer};
    SpanLayer::new()
        .with_filter(LevelFilter::INFO)
        .and_then(
            ErrorLayer::new()
                .enable_span_attributes()
                .with_filter(LevelFilter::ERROR.or(filter_fn(|m| m.is_span()))),
        )
        .and_then(BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::{error, info, info_span, warn};

    #[test]
    fn options_send_no_personal_data_and_no_traces() {
        let options = sentry_options("https://public@sentry.example.com/42").unwrap();
        assert!(!options.send_default_pii);
        assert!(matches!(
            options.traces_sampling_strategy,
            sentry::TracesSamplingStrategy::Disabled
        ));
        assert!(options.release.is_some());
        assert!(sentry_options("not a dsn").is_err());
    }

    #[test]
    fn errors_are_reported_with_the_ids_of_their_spans_and_nothing_below_is() {
        let subscriber = tracing_subscriber::registry().with(sentry_layers());
        let events = tracing::subscriber::with_default(subscriber, || {
            sentry::test::with_captured_events(|| {
                let span = info_span!(
                    "tool_call",
                    call = "CA0123",
                    invocation = "inv-1",
                    tool = "transfer"
                );
                let _entered = span.enter();
                info!("tool call received");
                warn!("slow answer");
                error!(
                    reason = "database unavailable",
                    "could not log the tool call"
                );
            })
        });
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!(event.level, sentry::Level::Error);
        assert_eq!(
            event.message.as_deref(),
            Some("could not log the tool call")
        );
        let text = serde_json::to_string(event).unwrap();
        for id in ["CA0123", "inv-1", "database unavailable"] {
            assert!(text.contains(id), "{id} missing from {text}");
        }
        let crumbs: Vec<_> = event
            .breadcrumbs
            .iter()
            .filter_map(|b| b.message.as_deref())
            .collect();
        assert_eq!(crumbs, ["tool call received", "slow answer"]);
        assert!(event.user.is_none());
    }
}

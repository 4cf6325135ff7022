//! What operators use: health and readiness, Prometheus metrics, the security headers every
//! response carries, the `callbacks` CLI (the dashboard comes with a later issue).

pub mod callbacks_cli;
pub mod headers;
pub mod health;
pub mod metrics;

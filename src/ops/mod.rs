//! What operators and on-call staff use: the dashboard, health and readiness, Prometheus
//! metrics, the security headers every response carries, the `callbacks`, `staff`, `tools`,
//! `backup` and `prune` commands.

pub mod admin;
pub mod backup;
pub mod callbacks_cli;
pub mod clinic_day;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod prune;
pub mod staff_cli;
pub mod tools_cli;

//! What operators use: health and readiness, the `callbacks` CLI (the dashboard and metrics come
//! with later issues).

pub mod callbacks_cli;
pub mod health;

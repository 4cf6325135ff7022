//! What operators and on-call staff use: the dashboard, health and readiness, the `callbacks`
//! CLI.

pub mod admin;
pub mod callbacks_cli;
pub mod health;
pub mod staff_cli;

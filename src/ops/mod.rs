//! What operators use: health and readiness (the dashboard and metrics come with later issues).

pub mod health;

//! Wire formats only: serde types and builders, no I/O.

pub mod jambonz;
pub mod salvage;
pub mod twilio;
pub mod ultravox;

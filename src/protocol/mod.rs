//! Wire formats only: serde types, the parsing and validation of frames, and builders that take
//! plain values. No I/O, and nothing of lifeline's own: translating between these messages and
//! tools, tenants or transfer plans is the adapters' work (`ingress`, `telephony`).

pub mod jambonz;
pub(crate) mod salvage;
pub mod twilio;
pub mod ultravox;

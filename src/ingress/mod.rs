//! One module per platform: authenticate, translate the wire format into a
//! [`ToolInvocation`](crate::tools::ToolInvocation), and translate the result back.

pub mod auth;
pub mod jambonz;
pub mod twilio;
pub mod ultravox;
pub mod ws_accept;

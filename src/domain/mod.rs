//! The vocabulary every layer shares: platforms, tool names and invocations, tool outcomes and
//! errors, urgency, business hours.
//!
//! The bottom layer: it imports nothing of ours (see ARCHITECTURE.md and `tests/layers.rs`), so
//! the store, telephony, configuration and the worker can speak of a platform or an urgency
//! without depending on the tools that run the calls.

pub mod business_hours;
mod invocation;
mod platform;
mod tool_result;
pub mod urgency;

pub use business_hours::BusinessHours;
pub use invocation::{ToolInvocation, ToolName};
pub use platform::Platform;
pub use tool_result::{ErrorKind, ToolError, ToolOutput, ToolResult};
pub use urgency::Urgency;

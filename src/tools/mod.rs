//! Tools the AI agent calls, independent of any wire format.
//!
//! An ingress adapter turns a platform message into a [`ToolInvocation`], hands it to the
//! [`pipeline`], and turns the `Result<ToolOutput, ToolError>` back into its own format.

pub mod admission;
pub mod args;
pub mod collect_info;
pub mod context;
pub mod hang_up;
mod limits;
pub mod pipeline;
pub mod transfer;

pub use crate::domain::{
    ErrorKind, Platform, ToolError, ToolInvocation, ToolName, ToolOutput, ToolResult,
};
// The domain's modules under their old paths (`tools::urgency::Urgency`), for code and tests
// written before they moved to `crate::domain`.
pub use crate::domain::{business_hours, urgency};

//! What a tool acts on: the tenant, the call row and the live call's controls, taken from our
//! own records. The pipeline builds it and the handlers (`collect_info`, `transfer`, `hang_up`)
//! borrow it, so they need nothing from the pipeline itself.

use std::sync::Arc;

use crate::config::Tenant;
use crate::store::CallRow;
use crate::telephony::CallControl;

/// Who and what an invocation acts on, from our own records, borrowed by the tools.
pub struct CallContext<'a> {
    pub tenant: &'a Arc<Tenant>,
    /// The call row, when the adapter knows it (tools that act on the call need it).
    pub call: Option<&'a CallRow>,
    /// How to act on the live call.
    pub control: &'a dyn CallControl,
}

/// The same, owned: the effect of an invocation outlives the request that asked for it.
#[derive(Clone)]
pub struct CallScope {
    pub tenant: Arc<Tenant>,
    pub call: Option<Arc<CallRow>>,
    pub control: Arc<dyn CallControl>,
}

impl CallScope {
    /// The borrowed view the tools take.
    pub fn context(&self) -> CallContext<'_> {
        CallContext {
            tenant: &self.tenant,
            call: self.call.as_deref(),
            control: self.control.as_ref(),
        }
    }
}

//! [`OperationBudget`]: the per-invocation operation count Cloudflare enforces (1,000 KV
//! operations per Worker invocation). The binding makes one per invocation and attaches it to
//! the namespace handles it gives the Worker ([`crate::KvNamespace::with_budget`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::error::KvError;
use crate::limits::MAX_OPERATIONS_PER_INVOCATION;

/// A shared counter of operations; cheap to clone (clones count together).
#[derive(Debug, Clone)]
pub struct OperationBudget {
    used: Arc<AtomicU32>,
    limit: u32,
}

impl Default for OperationBudget {
    fn default() -> Self {
        OperationBudget::new(MAX_OPERATIONS_PER_INVOCATION)
    }
}

impl OperationBudget {
    /// A budget of `limit` operations.
    pub fn new(limit: u32) -> OperationBudget {
        OperationBudget {
            used: Arc::new(AtomicU32::new(0)),
            limit,
        }
    }

    /// Counts one operation; fails once the budget is spent (the failed call is not counted,
    /// so every later call fails too).
    pub fn charge(&self) -> Result<(), KvError> {
        let prev = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u < self.limit).then_some(u + 1)
            });
        prev.map(|_| ()).map_err(|_| KvError::TooManyOperations)
    }

    /// Operations counted so far.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }
}

//! `[audit]`: the JSONL audit files' retention.

use serde::Deserialize;

/// Audit log behaviour.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Files older than this many days are removed by the worker (0 = keep).
    pub retention_days: u32,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAudit {
    retention_days: u32,
}

impl RawAudit {
    /// Every value is valid (0 keeps files forever).
    pub(super) fn validate(self) -> AuditSettings {
        AuditSettings {
            retention_days: self.retention_days,
        }
    }
}

//! `[drafts]`: AI drafts waiting for a person's approval.

use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};

/// AI drafts (`[drafts]`).
#[derive(Debug, Clone)]
pub struct DraftSettings {
    /// Open (pending or stale) drafts nobody reviewed within this long
    /// become `expired`.
    pub expire_after: Duration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDrafts {
    expire_after_ms: u64,
}

impl RawDrafts {
    pub(super) fn validate(self) -> Result<DraftSettings, ConfigError> {
        Ok(DraftSettings {
            expire_after: Duration::from_millis(positive(
                "drafts.expire_after_ms",
                self.expire_after_ms,
            )?),
        })
    }
}

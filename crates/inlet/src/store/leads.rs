//! The Lead Ads side of the store: one `leads` row per lead a `leadgen`
//! webhook announced.
//!
//! A row is written `pending` in the same transaction as its new page
//! change, together with the job on `{prefix}lead.fetch` (outbox): a
//! redelivered webhook stores no new change, so it queues nothing, and the
//! key (tenant, lead_id) keeps one row per lead whatever happens. The lead
//! consumer then records `fetched` (Graph's answer; the first time, the
//! `lead.after.create` event is logged in the same transaction), `failed`
//! (a permission or request error, kept as JSON in `error`) or
//! `dead_lettered` (transient errors outlasted the retries; shown by the
//! DLQ, whose remove records `discarded`).
//! `inlet leads refetch` puts a lead back to `pending` and queues a job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use super::StoreError;
use crate::plan::OutboxRow;

/// States of a lead.
pub mod state {
    /// Queued, not yet fetched (also between retries).
    pub const PENDING: &str = "pending";
    /// Fetched and stored.
    pub const FETCHED: &str = "fetched";
    /// Refused for good (permission, unknown lead): the Graph error is kept.
    pub const FAILED: &str = "failed";
    /// Transient errors outlasted the retries (in the DLQ as `lead-{id}`;
    /// a replay or a refetch queues it again).
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// A dead-lettered lead an operator gave up (removed from the DLQ).
    pub const DISCARDED: &str = "discarded";
    /// Every state.
    pub const ALL: [&str; 5] = [PENDING, FETCHED, FAILED, DEAD_LETTERED, DISCARDED];
    /// States the consumer does not touch again (a refetch may).
    pub const FINAL: [&str; 4] = [FETCHED, FAILED, DEAD_LETTERED, DISCARDED];
}

/// The entity of lead events (`lead.after.create`).
pub const ENTITY: &str = "lead";

/// The outbox row of one lead job: fields `lead_id`, `page_id`, `tenant`.
pub fn lead_job(tenant: &str, lead_id: &str, page_id: &str) -> OutboxRow {
    OutboxRow {
        stream: crate::streams::LEAD_FETCH.to_string(),
        fields: BTreeMap::from([
            ("lead_id".to_string(), lead_id.to_string()),
            ("page_id".to_string(), page_id.to_string()),
            ("tenant".to_string(), tenant.to_string()),
        ]),
    }
}

/// A lead as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadRecord {
    /// Row id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Meta's lead id (`leadgen_id`).
    pub lead_id: String,
    /// The Page the form belongs to.
    pub page_id: String,
    /// Lead form.
    pub form_id: Option<String>,
    /// Ad (none for organic leads).
    pub ad_id: Option<String>,
    /// Ad set.
    pub adset_id: Option<String>,
    /// Campaign.
    pub campaign_id: Option<String>,
    /// Whether the lead came from organic reach.
    pub is_organic: Option<bool>,
    /// `fb` or `ig`.
    pub platform: Option<String>,
    /// When the person submitted the form.
    pub created_time: Option<DateTime<Utc>>,
    /// Graph's `field_data` verbatim.
    pub field_data: Option<Value>,
    /// Name (full_name, or first_name + last_name).
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone number as entered.
    pub phone: Option<String>,
    /// The contact with this phone number, when there is one.
    pub contact_id: Option<i64>,
    /// State (see [`state`]).
    pub status: String,
    /// The Graph error (or reason) of the last failure.
    pub error: Option<Value>,
    /// Attempts made.
    pub attempts: i32,
    /// When it was last fetched.
    pub fetched_at: Option<DateTime<Utc>>,
    /// When the webhook was stored.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What Graph answered about a lead, read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FetchedLead {
    /// Lead form.
    pub form_id: Option<String>,
    /// Ad.
    pub ad_id: Option<String>,
    /// Ad set.
    pub adset_id: Option<String>,
    /// Campaign.
    pub campaign_id: Option<String>,
    /// Organic reach.
    pub is_organic: Option<bool>,
    /// `fb` / `ig`.
    pub platform: Option<String>,
    /// Submission time.
    pub created_time: Option<DateTime<Utc>>,
    /// `field_data` verbatim.
    pub field_data: Value,
    /// Name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone as entered.
    pub phone: Option<String>,
    /// The phone's digits (`+1 555-0100` → `15550100`), matched against
    /// WhatsApp contacts' `wa_id`.
    pub phone_digits: Option<String>,
}

/// An outcome to record.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadOutcome {
    /// Fetched: the lead's data.
    Fetched(Box<FetchedLead>),
    /// Refused for good: the Graph error.
    Failed(Value),
    /// A transient failure; another attempt follows.
    Retrying(Value),
    /// Transient failures outlasted the retries.
    DeadLettered(Value),
}

/// Which leads to list.
#[derive(Debug, Clone, Default)]
pub struct LeadFilter {
    /// Only this state.
    pub status: Option<String>,
    /// Only this lead id (any tenant).
    pub lead_id: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// Counts for `inlet status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeadStats {
    /// Leads per state.
    pub by_status: BTreeMap<String, i64>,
    /// The most recently failed or dead-lettered lead, with its error.
    pub last_error: Option<LeadError>,
}

/// A lead's last failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadError {
    /// Meta's lead id.
    pub lead_id: String,
    /// The Page.
    pub page_id: String,
    /// `failed` or `dead_lettered`.
    pub status: String,
    /// The Graph error.
    pub error: Option<Value>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A lead waiting to be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLead {
    /// Tenant.
    pub tenant: String,
    /// Meta's lead id.
    pub lead_id: String,
    /// The Page.
    pub page_id: String,
}

/// The `leads` table.
pub trait LeadStore: Send + Sync {
    /// One lead.
    fn lead<'a>(
        &'a self,
        tenant: &'a str,
        lead_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<LeadRecord>, StoreError>>;
    /// Leads, newest first.
    fn leads<'a>(
        &'a self,
        filter: &'a LeadFilter,
    ) -> BoxFuture<'a, Result<Vec<LeadRecord>, StoreError>>;
    /// Records an outcome while the lead is `pending` (the first outcome
    /// wins: a redelivered job cannot undo it). `fetched` links the contact
    /// whose WhatsApp number is the lead's phone and, the first time, logs
    /// `lead.after.create` in the same transaction. False when nothing
    /// changed.
    fn record_lead<'a>(
        &'a self,
        tenant: &'a str,
        lead_id: &'a str,
        outcome: LeadOutcome,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Pending leads, oldest first. Direct mode resumes them at start.
    fn pending_leads(&self, limit: i64) -> BoxFuture<'_, Result<Vec<PendingLead>, StoreError>>;
    /// Puts a lead back to `pending` with fresh attempts and queues its job,
    /// in one transaction. False when there is no such lead.
    fn requeue_lead<'a>(
        &'a self,
        tenant: &'a str,
        lead_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Gives dead-lettered leads up (`discarded`: the DLQ's remove and
    /// purge). Returns how many were dead-lettered.
    fn discard_dead_leads<'a>(
        &'a self,
        lead_ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Counts per state and the last failure.
    fn lead_stats(&self) -> BoxFuture<'_, Result<LeadStats, StoreError>>;
}

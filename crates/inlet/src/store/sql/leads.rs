//! The `leads` table (see [`crate::store::leads`]): pending rows queued with
//! their page change, outcomes (with `lead.after.create`), refetches.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use super::{classify, fields_text, for_each_backend, Backend, SqlStore, CHUNK};
use crate::events::{Event, Operation, Phase};
use crate::plan::{ChangeRow, OutboxRow};
use crate::store::leads::{
    lead_job, state, LeadError, LeadFilter, LeadOutcome, LeadRecord, LeadStats, LeadStore,
    PendingLead, ENTITY,
};
use crate::store::StoreError;

const COLUMNS: &str = "id, tenant, lead_id, page_id, form_id, ad_id, adset_id, campaign_id, \
 is_organic, platform, created_time, field_data, name, email, phone, contact_id, status, error, \
 attempts, fetched_at, created_at, updated_at";

/// A text id in a webhook value (Meta sends ids as strings, sometimes as
/// numbers).
fn id_in(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A lead announced by a newly stored page change.
#[derive(Debug)]
pub(super) struct Announced<'a> {
    tenant: &'a str,
    lead_id: &'a str,
    page_id: String,
    form_id: Option<String>,
    ad_id: Option<String>,
    trace_id: String,
}

/// The leads announced by newly stored page changes. `new` holds the
/// (tenant, change key) this write inserted; redelivered changes are not in
/// it, so they queue nothing.
pub(super) fn announced<'a>(
    changes: &'a [ChangeRow],
    new: &HashSet<(String, String)>,
) -> Vec<Announced<'a>> {
    changes
        .iter()
        .filter(|c| c.change.kind == "lead" && new.contains(&(c.tenant.clone(), c.key.clone())))
        .map(|c| {
            let v = &c.change.value;
            Announced {
                tenant: c.tenant.as_str(),
                lead_id: c.change.external_id.as_str(),
                page_id: id_in(v, "page_id").unwrap_or_else(|| c.change.account_id.clone()),
                form_id: id_in(v, "form_id"),
                ad_id: id_in(v, "ad_id"),
                trace_id: c.trace_id.to_string(),
            }
        })
        .collect()
}

/// The event data of a fetched lead (what a CRM needs to contact it).
fn lead_data(r: &LeadRecord) -> Value {
    json!({
        "id": r.id,
        "lead_id": r.lead_id,
        "page_id": r.page_id,
        "form_id": r.form_id,
        "ad_id": r.ad_id,
        "adset_id": r.adset_id,
        "campaign_id": r.campaign_id,
        "is_organic": r.is_organic,
        "platform": r.platform,
        "created_time": r.created_time,
        "name": r.name,
        "email": r.email,
        "phone": r.phone,
        "field_data": r.field_data,
        "contact_id": r.contact_id,
    })
}

macro_rules! impl_leads {
    ($db:ty) => {
        impl SqlStore<$db> {
            fn lead_of(r: &<$db as sqlx::Database>::Row) -> Result<LeadRecord, sqlx::Error> {
                let field_data: Option<Json<Value>> = r.try_get("field_data")?;
                let error: Option<Json<Value>> = r.try_get("error")?;
                Ok(LeadRecord {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant")?,
                    lead_id: r.try_get("lead_id")?,
                    page_id: r.try_get("page_id")?,
                    form_id: r.try_get("form_id")?,
                    ad_id: r.try_get("ad_id")?,
                    adset_id: r.try_get("adset_id")?,
                    campaign_id: r.try_get("campaign_id")?,
                    is_organic: r.try_get("is_organic")?,
                    platform: r.try_get("platform")?,
                    created_time: r.try_get("created_time")?,
                    field_data: field_data.map(|j| j.0),
                    name: r.try_get("name")?,
                    email: r.try_get("email")?,
                    phone: r.try_get("phone")?,
                    contact_id: r.try_get("contact_id")?,
                    status: r.try_get("status")?,
                    error: error.map(|j| j.0),
                    attempts: r.try_get("attempts")?,
                    fetched_at: r.try_get("fetched_at")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            }

            /// Inserts the `pending` rows of leads announced by new page
            /// changes inside the batch's transaction; returns the jobs of
            /// the rows it inserted, for the outbox.
            pub(super) async fn queue_lead_jobs(
                tx: &mut sqlx::Transaction<'_, $db>,
                changes: &[ChangeRow],
                new: &HashSet<(String, String)>,
                now: DateTime<Utc>,
            ) -> Result<Vec<OutboxRow>, StoreError> {
                let rows = announced(changes, new);
                let mut jobs = Vec::new();
                for chunk in rows.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO leads (tenant, lead_id, page_id, form_id, ad_id, status, attempts, \
                         trace_id, created_at, updated_at) ",
                    );
                    qb.push_values(chunk, |mut b, a| {
                        b.push_bind(a.tenant)
                            .push_bind(a.lead_id)
                            .push_bind(&a.page_id)
                            .push_bind(&a.form_id)
                            .push_bind(&a.ad_id)
                            .push_bind(state::PENDING)
                            .push_bind(0i32)
                            .push_bind(&a.trace_id)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (tenant, lead_id) DO NOTHING RETURNING tenant, lead_id, page_id");
                    for r in qb.build().fetch_all(&mut **tx).await.map_err(classify)? {
                        let tenant: String = r.try_get("tenant").map_err(classify)?;
                        let lead_id: String = r.try_get("lead_id").map_err(classify)?;
                        let page_id: String = r.try_get("page_id").map_err(classify)?;
                        jobs.push(lead_job(&tenant, &lead_id, &page_id));
                    }
                }
                Ok(jobs)
            }

            /// The contact whose WhatsApp number is `digits`.
            async fn contact_by_phone(
                tx: &mut sqlx::Transaction<'_, $db>,
                tenant: &str,
                digits: &str,
            ) -> Result<Option<i64>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT contact_id FROM contact_identities WHERE channel = 'whatsapp' AND kind = 'wa_id' AND tenant = ",
                );
                qb.push_bind(tenant).push(" AND value = ").push_bind(digits).push(" LIMIT 1");
                let row = qb.build().fetch_optional(&mut **tx).await.map_err(classify)?;
                row.map(|r| r.try_get("contact_id")).transpose().map_err(classify)
            }
        }

        impl LeadStore for SqlStore<$db> {
            fn lead<'a>(
                &'a self,
                tenant: &'a str,
                lead_id: &'a str,
            ) -> BoxFuture<'a, Result<Option<LeadRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM leads WHERE tenant = "));
                    qb.push_bind(tenant).push(" AND lead_id = ").push_bind(lead_id);
                    let row = qb.build().fetch_optional(&self.pool).await.map_err(classify)?;
                    row.map(|r| Self::lead_of(&r)).transpose().map_err(classify)
                })
            }

            fn leads<'a>(
                &'a self,
                filter: &'a LeadFilter,
            ) -> BoxFuture<'a, Result<Vec<LeadRecord>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM leads WHERE 1 = 1"));
                    if let Some(s) = &filter.status {
                        qb.push(" AND status = ").push_bind(s);
                    }
                    if let Some(id) = &filter.lead_id {
                        qb.push(" AND lead_id = ").push_bind(id);
                    }
                    qb.push(" ORDER BY id DESC LIMIT ").push_bind(filter.limit.max(1));
                    qb.build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?
                        .iter()
                        .map(Self::lead_of)
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn record_lead<'a>(
                &'a self,
                tenant: &'a str,
                lead_id: &'a str,
                outcome: LeadOutcome,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let now = Utc::now();
                    // A write transaction from the start (SQLite: BEGIN IMMEDIATE),
                    // so reading first cannot make the write fail as busy.
                    let mut tx = self
                        .pool
                        .begin_with(<$db as Backend>::DIALECT.write_begin)
                        .await
                        .map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE leads SET updated_at = ");
                    qb.push_bind(now).push(", attempts = attempts + 1");
                    match &outcome {
                        LeadOutcome::Fetched(lead) => {
                            let contact = match &lead.phone_digits {
                                Some(d) => Self::contact_by_phone(&mut tx, tenant, d).await?,
                                None => None,
                            };
                            qb.push(", status = ")
                                .push_bind(state::FETCHED)
                                .push(", form_id = COALESCE(")
                                .push_bind(&lead.form_id)
                                .push(", form_id), ad_id = COALESCE(")
                                .push_bind(&lead.ad_id)
                                .push(", ad_id), adset_id = ")
                                .push_bind(&lead.adset_id)
                                .push(", campaign_id = ")
                                .push_bind(&lead.campaign_id)
                                .push(", is_organic = ")
                                .push_bind(lead.is_organic)
                                .push(", platform = ")
                                .push_bind(&lead.platform)
                                .push(", created_time = ")
                                .push_bind(lead.created_time)
                                .push(", field_data = ")
                                .push_bind(Json(&lead.field_data))
                                .push(", name = ")
                                .push_bind(&lead.name)
                                .push(", email = ")
                                .push_bind(&lead.email)
                                .push(", phone = ")
                                .push_bind(&lead.phone)
                                .push(", contact_id = ")
                                .push_bind(contact)
                                .push(", error = NULL, fetched_at = ")
                                .push_bind(now);
                        }
                        LeadOutcome::Failed(error) | LeadOutcome::DeadLettered(error) => {
                            let st = if matches!(outcome, LeadOutcome::Failed(_)) {
                                state::FAILED
                            } else {
                                state::DEAD_LETTERED
                            };
                            qb.push(", status = ").push_bind(st).push(", error = ").push_bind(Json(error));
                        }
                        LeadOutcome::Retrying(error) => {
                            qb.push(", error = ").push_bind(Json(error));
                        }
                    }
                    qb.push(" WHERE tenant = ")
                        .push_bind(tenant)
                        .push(" AND lead_id = ")
                        .push_bind(lead_id)
                        .push(" AND status = ")
                        .push_bind(state::PENDING)
                        .push(format!(" RETURNING {COLUMNS}, trace_id"));
                    let row = qb.build().fetch_optional(&mut *tx).await.map_err(classify)?;
                    let Some(row) = row else {
                        return Ok(false);
                    };
                    if matches!(outcome, LeadOutcome::Fetched(_)) && self.filter.allows(ENTITY) {
                        let record = Self::lead_of(&row).map_err(classify)?;
                        let trace: Option<String> = row.try_get("trace_id").map_err(classify)?;
                        // Keyed by the lead: a refetch logs no second create.
                        let mut event = Event::new(
                            ENTITY,
                            Phase::After,
                            Operation::Create,
                            lead_id,
                            tenant,
                            trace,
                            "meta:graph",
                            lead_data(&record),
                        );
                        event.result = Some(json!({"id": record.id, "contact_id": record.contact_id}));
                        Self::log_events(&mut tx, &[event]).await?;
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                })
            }

            fn pending_leads(&self, limit: i64) -> BoxFuture<'_, Result<Vec<PendingLead>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("SELECT tenant, lead_id, page_id FROM leads WHERE status = ");
                    qb.push_bind(state::PENDING).push(" ORDER BY updated_at, id LIMIT ").push_bind(limit);
                    qb.build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?
                        .iter()
                        .map(|r| {
                            Ok(PendingLead {
                                tenant: r.try_get("tenant")?,
                                lead_id: r.try_get("lead_id")?,
                                page_id: r.try_get("page_id")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn requeue_lead<'a>(
                &'a self,
                tenant: &'a str,
                lead_id: &'a str,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let now = Utc::now();
                    // A write transaction from the start (SQLite: BEGIN IMMEDIATE),
                    // so reading first cannot make the write fail as busy.
                    let mut tx = self
                        .pool
                        .begin_with(<$db as Backend>::DIALECT.write_begin)
                        .await
                        .map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE leads SET status = ");
                    qb.push_bind(state::PENDING)
                        .push(", attempts = 0, error = NULL, updated_at = ")
                        .push_bind(now)
                        .push(" WHERE tenant = ")
                        .push_bind(tenant)
                        .push(" AND lead_id = ")
                        .push_bind(lead_id)
                        .push(" RETURNING page_id");
                    let Some(row) = qb.build().fetch_optional(&mut *tx).await.map_err(classify)? else {
                        return Ok(false);
                    };
                    let page_id: String = row.try_get("page_id").map_err(classify)?;
                    let job = lead_job(tenant, lead_id, &page_id);
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO outbox (stream, fields, created_at) ");
                    qb.push_values([&job], |mut b, o| {
                        b.push_bind(&o.stream).push_bind(fields_text(&o.fields)).push_bind(now);
                    });
                    qb.build().execute(&mut *tx).await.map_err(classify)?;
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                })
            }

            fn discard_dead_leads<'a>(
                &'a self,
                lead_ids: &'a [String],
            ) -> BoxFuture<'a, Result<u64, StoreError>> {
                Box::pin(async move {
                    let mut n = 0;
                    for chunk in lead_ids.chunks(CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new("UPDATE leads SET status = ");
                        qb.push_bind(state::DISCARDED)
                            .push(", updated_at = ")
                            .push_bind(Utc::now())
                            .push(" WHERE status = ")
                            .push_bind(state::DEAD_LETTERED)
                            .push(" AND lead_id IN (");
                        let mut list = qb.separated(", ");
                        for id in chunk {
                            list.push_bind(id);
                        }
                        qb.push(")");
                        n += qb.build().execute(&self.pool).await.map_err(classify)?.rows_affected();
                    }
                    Ok(n)
                })
            }

            fn lead_stats(&self) -> BoxFuture<'_, Result<LeadStats, StoreError>> {
                Box::pin(async move {
                    let mut stats = LeadStats::default();
                    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM leads GROUP BY status")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?;
                    for r in rows {
                        stats.by_status.insert(
                            r.try_get("status").map_err(classify)?,
                            r.try_get("n").map_err(classify)?,
                        );
                    }
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT lead_id, page_id, status, error, updated_at FROM leads WHERE status IN (",
                    );
                    qb.push_bind(state::FAILED)
                        .push(", ")
                        .push_bind(state::DEAD_LETTERED)
                        .push(") ORDER BY updated_at DESC, id DESC LIMIT 1");
                    if let Some(r) = qb.build().fetch_optional(&self.pool).await.map_err(classify)? {
                        let error: Option<Json<Value>> = r.try_get("error").map_err(classify)?;
                        stats.last_error = Some(LeadError {
                            lead_id: r.try_get("lead_id").map_err(classify)?,
                            page_id: r.try_get("page_id").map_err(classify)?,
                            status: r.try_get("status").map_err(classify)?,
                            error: error.map(|j| j.0),
                            at: r.try_get("updated_at").map_err(classify)?,
                        });
                    }
                    Ok(stats)
                })
            }
        }
    };
}

for_each_backend!(impl_leads);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::WritePlan;

    fn plan(names: &[&str]) -> WritePlan {
        super::super::fixture_plan(crate::envelope::Source::Facebook, names)
    }

    #[test]
    fn new_leadgen_changes_announce_leads_and_nothing_else_does() {
        let p = plan(&["fb_leadgen.json", "fb_feed_comment.json"]);
        let all: HashSet<(String, String)> = p
            .changes
            .iter()
            .map(|c| (c.tenant.clone(), c.key.clone()))
            .collect();
        let leads = announced(&p.changes, &all);
        assert_eq!(leads.len(), 1, "only the leadgen change: {leads:?}");
        let lead = &leads[0];
        assert_eq!(lead.tenant, "t");
        assert_eq!(lead.lead_id, "810000000000013");
        assert_eq!(lead.page_id, "300000000000003");
        assert_eq!(lead.form_id.as_deref(), Some("800000000000012"));
        assert_eq!(lead.ad_id.as_deref(), Some("120200000000000011"));
        // A redelivery stores no new change: no lead, no job.
        assert!(announced(&p.changes, &HashSet::new()).is_empty());
    }
}

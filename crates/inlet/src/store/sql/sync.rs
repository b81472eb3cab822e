//! The sync tables (see [`crate::store::sync`]): `sync_state` (leases,
//! cursors, runs) and `ad_insights` (daily campaign figures, upserted).

use futures_util::future::BoxFuture;
use sqlx::{QueryBuilder, Row};

use super::{classify, for_each_backend, SqlStore, CHUNK};
use crate::store::sync::{InsightRow, RunOutcome, SyncState, SyncStore};
use crate::store::StoreError;

const STATE_COLUMNS: &str = "job, target, lease_owner, lease_until_ms, cursor, last_started_ms, \
 last_finished_ms, last_status, last_error, last_rows, rows_total, runs, next_run_ms";

const INSIGHT_COLUMNS: &str =
    "account_id, campaign_id, date, campaign_name, currency, spend_micros, impressions, clicks";

macro_rules! impl_sync {
    ($db:ty) => {
        impl SyncStore for SqlStore<$db> {
            fn take_lease<'a>(
                &'a self,
                job: &'a str,
                target: &'a str,
                owner: &'a str,
                now_ms: i64,
                until_ms: i64,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO sync_state (job, target) VALUES (");
                    qb.push_bind(job).push(", ").push_bind(target);
                    qb.push(") ON CONFLICT (job, target) DO NOTHING");
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    let mut qb = QueryBuilder::<$db>::new("UPDATE sync_state SET lease_owner = ");
                    qb.push_bind(owner)
                        .push(", lease_until_ms = ")
                        .push_bind(until_ms)
                        .push(", last_started_ms = ")
                        .push_bind(now_ms)
                        .push(" WHERE job = ")
                        .push_bind(job)
                        .push(" AND target = ")
                        .push_bind(target)
                        .push(" AND (lease_owner IS NULL OR lease_until_ms < ")
                        .push_bind(now_ms)
                        .push(" OR lease_owner = ")
                        .push_bind(owner)
                        .push(")");
                    let done = qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn renew_lease<'a>(
                &'a self,
                job: &'a str,
                target: &'a str,
                owner: &'a str,
                until_ms: i64,
                cursor: Option<&'a str>,
            ) -> BoxFuture<'a, Result<bool, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE sync_state SET lease_until_ms = ");
                    qb.push_bind(until_ms)
                        .push(", cursor = ")
                        .push_bind(cursor)
                        .push(" WHERE job = ")
                        .push_bind(job)
                        .push(" AND target = ")
                        .push_bind(target)
                        .push(" AND lease_owner = ")
                        .push_bind(owner);
                    let done = qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn finish_run<'a>(
                &'a self,
                job: &'a str,
                target: &'a str,
                owner: &'a str,
                now_ms: i64,
                outcome: &'a RunOutcome,
            ) -> BoxFuture<'a, Result<(), StoreError>> {
                Box::pin(async move {
                    let status = if outcome.error.is_some() { "failed" } else { "ok" };
                    let mut qb = QueryBuilder::<$db>::new(
                        "UPDATE sync_state SET lease_owner = NULL, lease_until_ms = 0",
                    );
                    if outcome.error.is_none() {
                        qb.push(", cursor = NULL");
                    }
                    qb.push(", last_finished_ms = ")
                        .push_bind(now_ms)
                        .push(", last_status = ")
                        .push_bind(status)
                        .push(", last_error = ")
                        .push_bind(outcome.error.as_deref())
                        .push(", last_rows = ")
                        .push_bind(outcome.rows)
                        .push(", rows_total = rows_total + ")
                        .push_bind(outcome.rows)
                        .push(", runs = runs + 1, next_run_ms = ")
                        .push_bind(outcome.next_run_ms)
                        .push(" WHERE job = ")
                        .push_bind(job)
                        .push(" AND target = ")
                        .push_bind(target)
                        .push(" AND lease_owner = ")
                        .push_bind(owner);
                    qb.build().execute(&self.pool).await.map_err(classify)?;
                    Ok(())
                })
            }

            fn sync_states(&self) -> BoxFuture<'_, Result<Vec<SyncState>, StoreError>> {
                Box::pin(async move {
                    let rows = sqlx::query(&format!(
                        "SELECT {STATE_COLUMNS} FROM sync_state ORDER BY job, target"
                    ))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            Ok(SyncState {
                                job: r.try_get("job")?,
                                target: r.try_get("target")?,
                                lease_owner: r.try_get("lease_owner")?,
                                lease_until_ms: r.try_get("lease_until_ms")?,
                                cursor: r.try_get("cursor")?,
                                last_started_ms: r.try_get("last_started_ms")?,
                                last_finished_ms: r.try_get("last_finished_ms")?,
                                last_status: r.try_get("last_status")?,
                                last_error: r.try_get("last_error")?,
                                last_rows: r.try_get("last_rows")?,
                                rows_total: r.try_get("rows_total")?,
                                runs: r.try_get("runs")?,
                                next_run_ms: r.try_get("next_run_ms")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }

            fn upsert_insights<'a>(
                &'a self,
                rows: &'a [InsightRow],
                now_ms: i64,
            ) -> BoxFuture<'a, Result<u64, StoreError>> {
                Box::pin(async move {
                    let mut written = 0;
                    let mut tx = self.pool.begin().await.map_err(classify)?;
                    for chunk in rows.chunks(CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(format!(
                            "INSERT INTO ad_insights ({INSIGHT_COLUMNS}, fetched_ms) "
                        ));
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(&r.account_id)
                                .push_bind(&r.campaign_id)
                                .push_bind(&r.date)
                                .push_bind(&r.campaign_name)
                                .push_bind(&r.currency)
                                .push_bind(r.spend_micros)
                                .push_bind(r.impressions)
                                .push_bind(r.clicks)
                                .push_bind(now_ms);
                        });
                        qb.push(
                            " ON CONFLICT (account_id, campaign_id, date) DO UPDATE SET \
                             campaign_name = COALESCE(excluded.campaign_name, ad_insights.campaign_name), \
                             currency = COALESCE(excluded.currency, ad_insights.currency), \
                             spend_micros = excluded.spend_micros, impressions = excluded.impressions, \
                             clicks = excluded.clicks, fetched_ms = excluded.fetched_ms",
                        );
                        written += qb.build().execute(&mut *tx).await.map_err(classify)?.rows_affected();
                    }
                    tx.commit().await.map_err(classify)?;
                    Ok(written)
                })
            }

            fn insights<'a>(
                &'a self,
                account: Option<&'a str>,
                since: &'a str,
            ) -> BoxFuture<'a, Result<Vec<InsightRow>, StoreError>> {
                Box::pin(async move {
                    let mut qb = QueryBuilder::<$db>::new(format!(
                        "SELECT {INSIGHT_COLUMNS} FROM ad_insights WHERE date >= "
                    ));
                    qb.push_bind(since);
                    if let Some(a) = account {
                        qb.push(" AND account_id = ").push_bind(a);
                    }
                    qb.push(" ORDER BY date, account_id, campaign_id");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                    rows.iter()
                        .map(|r| {
                            Ok(InsightRow {
                                account_id: r.try_get("account_id")?,
                                campaign_id: r.try_get("campaign_id")?,
                                date: r.try_get("date")?,
                                campaign_name: r.try_get("campaign_name")?,
                                currency: r.try_get("currency")?,
                                spend_micros: r.try_get("spend_micros")?,
                                impressions: r.try_get("impressions")?,
                                clicks: r.try_get("clicks")?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(classify)
                })
            }
        }
    };
}

for_each_backend!(impl_sync);

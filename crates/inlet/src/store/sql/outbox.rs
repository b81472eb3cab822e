//! The relay's side of the store: pending outbox entries, claims of outbox
//! entries and of event-log rows past the relay cursor, and their
//! completion (delete the entries, or move the cursor). How each dialect
//! claims is described beside [`super::dialect::POSTGRES`].

use futures_util::future::BoxFuture;
use sqlx::{QueryBuilder, Row};

use super::{classify, for_each_backend, Backend, SqlStore};
use crate::store::{OutboxClaim, OutboxEntry, StoreError};

/// Outbox rows or event-log rows claimed inside an open transaction.
struct SqlClaim<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    /// The claim's open transaction (Postgres: it holds the row locks);
    /// `None` when completing opens a write transaction of its own (SQLite).
    tx: Option<sqlx::Transaction<'static, DB>>,
    entries: Vec<OutboxEntry>,
    done: Completion,
}

/// What completing a [`SqlClaim`] does, before it commits.
enum Completion {
    /// Deletes the claimed outbox rows.
    DeleteOutbox,
    /// Moves the relay cursor `name` past the last claimed log row.
    AdvanceCursor {
        name: &'static str,
        tx: String,
        seq: i64,
    },
    /// Nothing was claimed.
    Nothing,
}

/// The relay cursor of the event log (its row in `relay_cursors`, created by
/// migration 0004).
pub(crate) const EVENTS_CURSOR: &str = "events";

/// Columns of `event_log` read back as events.
pub(crate) const EVENT_COLUMNS: &str =
    "seq, event_id, event_type, entity, phase, operation, tenant, \
 trace_id, correlation_id, actor, data, result, error, schema_version, occurred_at";

/// Outbox fields as stored: JSON text. The column is `text`, not `jsonb`:
/// the relay only passes the fields through, so Postgres need not parse them.
pub(crate) fn fields_text(entry_fields: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(entry_fields).unwrap_or_else(|_| "{}".into())
}

/// Reads outbox fields back (see [`fields_text`]).
fn fields_from_text(text: &str) -> Vec<(String, String)> {
    serde_json::from_str::<std::collections::BTreeMap<String, String>>(text)
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// An outbox row as an entry.
fn entry_from_row<R: Row>(r: &R) -> Result<OutboxEntry, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let fields: String = r.try_get("fields")?;
    Ok(OutboxEntry {
        id: r.try_get("id")?,
        stream: r.try_get("stream")?,
        fields: fields_from_text(&fields),
    })
}

macro_rules! impl_outbox {
    ($db:ty) => {
        impl OutboxClaim for SqlClaim<$db> {
            fn entries(&self) -> &[OutboxEntry] {
                &self.entries
            }

            fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
                Box::pin(async move {
                    match self.tx {
                        Some(tx) => tx.rollback().await.map_err(classify),
                        None => Ok(()),
                    }
                })
            }

            fn complete(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
                Box::pin(async move {
                    let d = <$db as Backend>::DIALECT;
                    let SqlClaim {
                        pool,
                        tx,
                        entries,
                        done,
                    } = *self;
                    let mut tx = match tx {
                        Some(tx) => tx,
                        None => pool.begin_with(d.write_begin).await.map_err(classify)?,
                    };
                    match done {
                        Completion::DeleteOutbox if !entries.is_empty() => {
                            let mut qb =
                                QueryBuilder::<$db>::new("DELETE FROM outbox WHERE id IN (");
                            let mut sep = qb.separated(", ");
                            for e in &entries {
                                sep.push_bind(e.id);
                            }
                            qb.push(")");
                            qb.build().execute(&mut *tx).await.map_err(classify)?;
                        }
                        Completion::AdvanceCursor {
                            name,
                            tx: last_tx,
                            seq,
                        } => {
                            let mut qb =
                                QueryBuilder::<$db>::new("UPDATE relay_cursors SET tx = CAST(");
                            qb.push_bind(last_tx)
                                .push(" AS ")
                                .push(d.tx_type)
                                .push("), seq = ")
                                .push_bind(seq)
                                .push(" WHERE name = ")
                                .push_bind(name);
                            qb.build().execute(&mut *tx).await.map_err(classify)?;
                        }
                        Completion::DeleteOutbox | Completion::Nothing => {}
                    }
                    tx.commit().await.map_err(classify)
                })
            }
        }

        impl SqlStore<$db> {
            /// Keeps a claim's read transaction open until it completes, or
            /// ends it now (see [`super::Dialect::hold_claim`]).
            async fn hold(
                tx: sqlx::Transaction<'static, $db>,
            ) -> Result<Option<sqlx::Transaction<'static, $db>>, StoreError> {
                if <$db as Backend>::DIALECT.hold_claim {
                    Ok(Some(tx))
                } else {
                    tx.commit().await.map_err(classify)?;
                    Ok(None)
                }
            }

            fn claim(
                &self,
                tx: Option<sqlx::Transaction<'static, $db>>,
                entries: Vec<OutboxEntry>,
                done: Completion,
            ) -> Box<dyn OutboxClaim> {
                Box::new(SqlClaim::<$db> {
                    pool: self.pool.clone(),
                    tx,
                    entries,
                    done,
                })
            }

            pub(super) async fn pending_outbox(
                &self,
                stream: Option<&str>,
                limit: i64,
            ) -> Result<Vec<OutboxEntry>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new("SELECT id, stream, fields FROM outbox");
                if let Some(stream) = stream {
                    qb.push(" WHERE stream = ").push_bind(stream);
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(limit);
                let rows = qb.build().fetch_all(&self.pool).await.map_err(classify)?;
                rows.iter()
                    .map(entry_from_row)
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(classify)
            }

            pub(super) async fn claim_outbox(
                &self,
                stream: Option<&str>,
                limit: i64,
            ) -> Result<Box<dyn OutboxClaim>, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let mut tx = self.pool.begin().await.map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new("SELECT id, stream, fields FROM outbox");
                if let Some(stream) = stream {
                    qb.push(" WHERE stream = ").push_bind(stream);
                }
                qb.push(" ORDER BY id LIMIT ")
                    .push_bind(limit)
                    .push(d.skip_locked);
                let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                let entries = rows
                    .iter()
                    .map(entry_from_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(classify)?;
                Ok(self.claim(Self::hold(tx).await?, entries, Completion::DeleteOutbox))
            }

            pub(super) async fn claim_log(
                &self,
                limit: i64,
            ) -> Result<Box<dyn OutboxClaim>, StoreError> {
                let d = <$db as Backend>::DIALECT;
                let mut tx = self.pool.begin().await.map_err(classify)?;
                // Locked by another relay (Postgres): nothing to do now.
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT CAST(tx AS text) AS tx, seq FROM relay_cursors WHERE name = ",
                );
                qb.push_bind(EVENTS_CURSOR).push(d.skip_locked);
                let cursor = qb
                    .build()
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
                let Some(cursor) = cursor else {
                    return Ok(self.claim(Self::hold(tx).await?, Vec::new(), Completion::Nothing));
                };
                let after_tx: String = cursor.try_get("tx").map_err(classify)?;
                let after_seq: i64 = cursor.try_get("seq").map_err(classify)?;
                let mut qb = QueryBuilder::<$db>::new("SELECT CAST(tx AS text) AS tx_text, ");
                qb.push(EVENT_COLUMNS)
                    .push(" FROM event_log WHERE (tx, seq) > (CAST(")
                    .push_bind(after_tx)
                    .push(" AS ")
                    .push(d.tx_type)
                    .push("), ")
                    .push_bind(after_seq)
                    .push(")")
                    .push(d.horizon)
                    .push(" ORDER BY tx, seq LIMIT ")
                    .push_bind(limit);
                let rows = qb.build().fetch_all(&mut *tx).await.map_err(classify)?;
                let mut entries = Vec::with_capacity(rows.len());
                let mut last = None;
                for row in &rows {
                    let (seq, event) =
                        crate::store::events::event_from_row(row).map_err(classify)?;
                    let tx_text: String = row.try_get("tx_text").map_err(classify)?;
                    let out = crate::events::outbox_row(&event);
                    entries.push(OutboxEntry {
                        id: seq,
                        stream: out.stream,
                        fields: out.fields.into_iter().collect(),
                    });
                    last = Some((tx_text, seq));
                }
                let done = match last {
                    Some((last_tx, seq)) => Completion::AdvanceCursor {
                        name: EVENTS_CURSOR,
                        tx: last_tx,
                        seq,
                    },
                    None => Completion::Nothing,
                };
                Ok(self.claim(Self::hold(tx).await?, entries, done))
            }

            pub(super) async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut qb = QueryBuilder::<$db>::new("DELETE FROM outbox WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(*id);
                }
                qb.push(")");
                qb.build().execute(&self.pool).await.map_err(classify)?;
                Ok(())
            }
        }
    };
}

for_each_backend!(impl_outbox);

//! Direct mode: the gateway runs the [`Pipeline`] in-process and answers only
//! after the store committed.
//!
//! Requests hand their event to one committer task through a channel. The
//! committer takes whatever is waiting (up to the batch size) and writes it in
//! one transaction — group commit: no added latency when traffic is light,
//! far fewer fsyncs and round trips under a burst. Each request then learns
//! its own fate. Store failures are retried briefly (the request is waiting,
//! Meta gives ~3 s) and then refused, so the gateway answers 503 and Meta
//! retries.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::dlq::letter::DeadLetter;
use crate::envelope::RawEvent;
use crate::ingest::{DirectError, DirectHandler};
use crate::pipeline::{OnExhausted, Pipeline, RetryPolicy};

type Reply = oneshot::Sender<Result<(), DirectError>>;

/// The in-process pipeline behind [`crate::ingest::Ingest`].
pub struct DirectPipeline {
    tx: mpsc::Sender<(RawEvent, Reply)>,
    pipeline: Pipeline,
}

impl DirectPipeline {
    /// Starts the committer task. `committed` is notified after each commit
    /// (wakes the outbox relay).
    pub fn start(pipeline: Pipeline, batch_size: usize, committed: Arc<Notify>) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<(RawEvent, Reply)>(batch_size * 4);
        let committer = pipeline.clone();
        // A waiting webhook must get its answer within Meta's ~3 s: one
        // attempt, then 503 and Meta retries the delivery later.
        let policy = RetryPolicy {
            max_attempts: 1,
            base: Duration::from_millis(100),
            factor: 2.0,
        };
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < batch_size {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (events, replies): (Vec<RawEvent>, Vec<Reply>) = batch.into_iter().unzip();
                let ids: Vec<_> = events.iter().map(|e| e.trace_id).collect();
                let outcome = committer
                    .process(events, &policy, OnExhausted::GiveBack)
                    .await;
                // Dead letters (malformed, rejected) are kept in the store.
                let mut failed_dead = std::collections::HashMap::new();
                for letter in &outcome.dead {
                    if let Err(e) = committer.store().put_dead_letter(letter).await {
                        failed_dead.insert(letter.event.trace_id, e);
                    }
                }
                let unavailable: std::collections::HashMap<_, _> = outcome
                    .unavailable
                    .iter()
                    .map(|(ev, e)| (ev.trace_id, e.clone()))
                    .collect();
                if !outcome.stored.is_empty() {
                    committed.notify_one();
                }
                for (id, reply) in ids.into_iter().zip(replies) {
                    let result = match (unavailable.get(&id), failed_dead.get(&id)) {
                        (Some(e), _) | (_, Some(e)) => Err(DirectError::Store(e.clone())),
                        _ => Ok(()),
                    };
                    let _ = reply.send(result);
                }
            }
        });
        Arc::new(Self { tx, pipeline })
    }
}

impl DirectHandler for DirectPipeline {
    fn handle(&self, event: RawEvent) -> BoxFuture<'_, Result<(), DirectError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.tx
                .send((event, reply))
                .await
                .map_err(|_| DirectError::Stopped)?;
            rx.await.map_err(|_| DirectError::Dropped)?
        })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), DirectError>> {
        Box::pin(async move {
            self.pipeline
                .store()
                .put_dead_letter(&letter)
                .await
                .map(|_| ())
                .map_err(DirectError::from)
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.pipeline.store().ping().await.is_ok() })
    }
}

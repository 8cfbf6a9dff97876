//! The leader's journal: durable job changes, written to etcd in order by one task. Changes that pile up
//! while a write is under way are coalesced (only a job's latest state is written), so a slow etcd slows
//! nothing but the journal. A write that finds the leadership gone ends the term.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use patchwork_shared::pb;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::jobs::{self, JobsError, Leadership};
use crate::pool::WorkerPool;
use crate::store::Journal;

enum Entry {
    Job(Box<pb::Job>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
pub struct EtcdJournal {
    tx: mpsc::UnboundedSender<Entry>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Job(job) => write!(f, "Job({})", job.id),
            Entry::Flush(_) => write!(f, "Flush"),
        }
    }
}

impl Journal for EtcdJournal {
    fn record(&self, job: &pb::Job) {
        let _ = self.tx.send(Entry::Job(Box::new(job.clone())));
    }
}

impl EtcdJournal {
    /// Starts the writer for one leadership term; it ends with `term_over`, and cancels it when a write finds
    /// that this coordinator is no longer the leader.
    pub fn start(client: Client, lead: Leadership, pool: Arc<WorkerPool>, term_over: CancellationToken) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(client, lead, pool, rx, term_over));
        Arc::new(Self { tx })
    }

    /// Waits until everything recorded before is in etcd; false if the term ended first.
    pub async fn flush(&self) -> bool {
        let (done, written) = oneshot::channel();
        self.tx.send(Entry::Flush(done)).is_ok() && written.await.is_ok()
    }
}

async fn write(
    client: Client,
    lead: Leadership,
    pool: Arc<WorkerPool>,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    term_over: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            entry = rx.recv() => match entry { Some(e) => e, None => return },
            _ = term_over.cancelled() => return,
        };
        let mut jobs: Vec<pb::Job> = Vec::new();
        let mut flushes = Vec::new();
        let mut take = |entry: Entry| match entry {
            Entry::Job(job) => match jobs.iter_mut().find(|j| j.id == job.id) {
                Some(slot) => *slot = *job,
                None => jobs.push(*job),
            },
            Entry::Flush(done) => flushes.push(done),
        };
        take(first);
        while let Ok(entry) = rx.try_recv() {
            take(entry);
        }
        for job in &jobs {
            let model = job.spec.as_ref().and_then(|s| pool.model(&s.model));
            let Some(model) = model else {
                tracing::error!(job = %job.id, "journal: the job's model is unknown; not written");
                continue;
            };
            loop {
                match jobs::save(&client, &lead, job, &model).await {
                    Ok(()) => break,
                    Err(JobsError::Deposed(term)) => {
                        tracing::warn!(term, "journal: leadership lost; ending the term");
                        term_over.cancel();
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(job = %job.id, %error, "journal: writing the job to etcd failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = term_over.cancelled() => return,
                        }
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

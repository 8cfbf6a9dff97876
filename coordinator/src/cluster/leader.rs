//! Leadership: every coordinator campaigns through etcd's election API under a lease of its own. The winner
//! leads one term (its term number is the revision that created its election key): it loads every job from
//! etcd, queues the unfinished ones (they resume from their checkpoints) and schedules. The moment its lease
//! cannot be renewed, or a fenced write finds its key gone, the term ends: runners stop, the local store is
//! dropped, and it campaigns again as a follower.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{LeaderKey, ResignOptions};
use patchwork_shared::cluster::{self, KeptLease, ELECTION};
use patchwork_shared::pb;
use patchwork_shared::spec::JobSpec;
use tokio_util::sync::CancellationToken;

use super::jobs::{self, Leadership};
use super::journal::EtcdJournal;
use super::{Cluster, Term};
use crate::dispatch::Dispatcher;
use crate::runner::JobContext;
use crate::server::schedule;
use crate::store::{is_terminal, JobStore, Journal};

/// Campaigns, leads while elected, and campaigns again, until `shutdown`.
pub async fn campaign(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let lease = match KeptLease::grant(&cluster.client, cluster.ttl).await {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(%error, "cannot campaign for leadership: no lease; retrying");
                if sleep_or_stop(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let health = lease.health();
        let mut election = cluster.client.election_client();
        let won = tokio::select! {
            won = election.campaign(ELECTION, cluster.advertise.clone(), lease.id) => won,
            _ = health.lapsed() => {
                lease.revoke(&cluster.client).await;
                continue;
            }
            _ = shutdown.cancelled() => {
                lease.revoke(&cluster.client).await;
                return;
            }
        };
        let key = match won.map(|mut w| w.take_leader()) {
            Ok(Some(key)) => key,
            Ok(None) => {
                tracing::warn!("the election answered without a leader key; campaigning again");
                lease.revoke(&cluster.client).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "campaigning failed; campaigning again");
                lease.revoke(&cluster.client).await;
                let _ = sleep_or_stop(backoff, &shutdown).await;
                continue;
            }
        };
        let lead = Leadership { key: key.key().to_vec(), term: key.rev() as u64 };
        tracing::info!(term = lead.term, address = %cluster.advertise, "elected leader");
        let term_over = CancellationToken::new();
        let leading = tokio::spawn(lead_term(cluster.clone(), lead.clone(), term_over.clone()));
        tokio::select! {
            _ = health.lapsed() => tracing::warn!(term = lead.term, "leadership lease not renewed; stepping down"),
            _ = term_over.cancelled() => tracing::warn!(term = lead.term, "leadership lost; stepping down"),
            _ = shutdown.cancelled() => tracing::info!(term = lead.term, "shutting down; giving up leadership"),
        }
        term_over.cancel();
        cluster.role.send_modify(|r| {
            r.lead = None;
            if r.term == lead.term {
                r.leader.clear();
            }
        });
        let _ = leading.await;
        resign(&cluster, key, lease).await;
    }
}

/// Gives the election key up now, so that a follower need not wait for the lease to run out.
async fn resign(cluster: &Cluster, key: LeaderKey, lease: KeptLease) {
    let mut election = cluster.client.election_client();
    let _ = cluster::timed(election.resign(Some(ResignOptions::new().with_leader(key)))).await;
    lease.revoke(&cluster.client).await;
}

async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.cancelled() => true,
    }
}

/// One term: load the jobs, then schedule until the term is over. Runners see the term end through their
/// context's stop token and abandon their jobs where they stand (their checkpoints remain for the next
/// leader).
async fn lead_term(cluster: Arc<Cluster>, lead: Leadership, term_over: CancellationToken) {
    let journal = EtcdJournal::start(cluster.client.clone(), lead.clone(), cluster.pool.clone(), term_over.clone());
    let store = JobStore::with_journal(cluster.config.queue_limit, Some(journal.clone()));
    let (stored, cancelled) = loop {
        match jobs::load(&cluster.client).await {
            Ok(loaded) => break loaded,
            Err(error) => {
                tracing::warn!(%error, "loading jobs from etcd failed; retrying");
                if sleep_or_stop(Duration::from_millis(300), &term_over).await {
                    return;
                }
            }
        }
    };
    let unfinished = restore(&cluster, &store, &journal, stored, &cancelled);
    tracing::info!(term = lead.term, unfinished, "took over the jobs");
    let context = Arc::new(JobContext {
        store: store.clone(),
        dispatcher: Dispatcher {
            pool: cluster.pool.clone(),
            timeout: cluster.config.eval_timeout,
            max_attempts: cluster.config.max_attempts,
            metrics: cluster.metrics.clone(),
        },
        data_dir: cluster.config.data_dir.clone(),
        decode_chunk: cluster.config.decode_chunk,
        decode_context: cluster.config.decode_context,
        checkpoint_every: cluster.config.checkpoint_every,
        checkpoint_interval: cluster.config.checkpoint_interval,
        term: lead.term,
        stop: term_over.clone(),
        journal: Some(journal.clone()),
    });
    cluster.role.send_modify(|r| {
        r.leader = cluster.advertise.clone();
        r.term = lead.term;
        r.lead = Some(Arc::new(Term { store, journal, lead: lead.clone() }));
    });
    schedule(context, cluster.config.max_running_jobs, term_over).await;
}

/// Puts stored jobs into the term's store; returns how many are unfinished.
fn restore(
    cluster: &Cluster,
    store: &JobStore,
    journal: &EtcdJournal,
    mut stored: Vec<(pb::Job, patchwork_shared::model::ModelGeometry)>,
    cancelled: &HashSet<String>,
) -> usize {
    // Oldest first, so that the queue keeps submission order among equal priorities.
    stored.sort_by(|(a, _), (b, _)| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let mut unfinished = 0;
    for (mut job, model) in stored {
        cluster.pool.know_model(model.clone());
        let spec = match job.spec.as_ref().map(|s| JobSpec::validate(s, &model, 0)) {
            Some(Ok(spec)) => spec,
            Some(Err(e)) => {
                tracing::error!(job = %job.id, error = %e, "a stored job's spec no longer validates; skipped");
                continue;
            }
            None => continue,
        };
        let mut video = None;
        if job.state == pb::JobState::Done as i32 {
            video = Some(cluster.config.data_dir.join("videos").join(format!("{}.mp4", job.id)));
        } else if !is_terminal(job.state) && cancelled.contains(&job.id) {
            job.state = pb::JobState::Cancelled as i32;
            job.finished_ms = crate::store::now_ms();
            store.insert(job.clone(), spec, None);
            journal.record(&job);
            continue;
        }
        if !is_terminal(job.state) {
            unfinished += 1;
        }
        store.insert(job, spec, video);
    }
    unfinished
}

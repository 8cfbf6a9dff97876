//! Jobs in etcd: created, saved and cancelled by the leader in transactions fenced by its leadership key
//! (a deposed leader's writes fail), and read by anyone.

use std::collections::HashSet;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use patchwork_shared::cluster::{self, ClusterError, CANCELS, JOBS, REQUESTS};
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb;
use prost::Message;

/// The leadership a write is fenced by: the election key and its creation revision (the term).
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: Vec<u8>,
    pub term: u64,
}

impl Leadership {
    fn holds(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.term as i64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Etcd(#[from] ClusterError),
    #[error("this coordinator is no longer the leader (term {0} ended)")]
    Deposed(u64),
    #[error("stored job {key}: {why}")]
    Corrupt { key: String, why: String },
}

impl From<etcd_client::Error> for JobsError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(e.into())
    }
}

impl From<JobsError> for tonic::Status {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Etcd(_) | JobsError::Deposed(_) => tonic::Status::unavailable(e.to_string()),
            JobsError::Corrupt { .. } => tonic::Status::internal(e.to_string()),
        }
    }
}

fn job_key(id: &str) -> String {
    format!("{JOBS}{id}")
}

/// The job as etcd keeps it: no per-window progress (that is the leader's live view only).
pub fn stored(job: &pb::Job, model: &ModelGeometry) -> Vec<u8> {
    let mut job = job.clone();
    if let Some(p) = job.progress.as_mut() {
        p.windows.clear();
    }
    pb::StoredJob { job: Some(job), model: Some(pb::ModelInfo::from(model)) }.encode_to_vec()
}

fn decode(key: &[u8], value: &[u8]) -> Result<(pb::Job, ModelGeometry), JobsError> {
    let corrupt = |why: String| JobsError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), why };
    let stored = pb::StoredJob::decode(value).map_err(|e| corrupt(e.to_string()))?;
    let job = stored.job.ok_or_else(|| corrupt("no job".into()))?;
    let model = ModelGeometry::try_from(stored.model.as_ref().ok_or_else(|| corrupt("no model".into()))?)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok((job, model))
}

/// What [`create`] did.
pub enum Created {
    New,
    /// An earlier submission with the same request id made this job.
    Existing(String),
}

/// Creates a job, unless its request id is already taken (then returns the job it names).
pub async fn create(
    client: &Client,
    lead: &Leadership,
    job: &pb::Job,
    model: &ModelGeometry,
) -> Result<Created, JobsError> {
    let mut when = vec![lead.holds(), Compare::version(job_key(&job.id), CompareOp::Equal, 0)];
    let mut then = vec![TxnOp::put(job_key(&job.id), stored(job, model), None)];
    let mut otherwise = Vec::new();
    if !job.request_id.is_empty() {
        let request = format!("{REQUESTS}{}", job.request_id);
        when.push(Compare::version(request.clone(), CompareOp::Equal, 0));
        then.push(TxnOp::put(request.clone(), job.id.clone(), None));
        otherwise.push(TxnOp::get(request, None));
    }
    let txn = Txn::new().when(when).and_then(then).or_else(otherwise);
    let mut kv = client.kv_client();
    let answer = cluster::timed(kv.txn(txn)).await?;
    if answer.succeeded() {
        return Ok(Created::New);
    }
    for op in answer.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            if let Some(kv) = get.kvs().first() {
                return Ok(Created::Existing(String::from_utf8_lossy(kv.value()).into_owned()));
            }
        }
    }
    Err(JobsError::Deposed(lead.term))
}

/// Writes a job's current state.
pub async fn save(client: &Client, lead: &Leadership, job: &pb::Job, model: &ModelGeometry) -> Result<(), JobsError> {
    fenced_put(client, lead, job_key(&job.id), stored(job, model)).await
}

/// Records that a job must not be resumed: a leader that dies before the job stops leaves this behind.
pub async fn mark_cancelled(client: &Client, lead: &Leadership, id: &str) -> Result<(), JobsError> {
    fenced_put(client, lead, format!("{CANCELS}{id}"), Vec::new()).await
}

async fn fenced_put(client: &Client, lead: &Leadership, key: String, value: Vec<u8>) -> Result<(), JobsError> {
    let txn = Txn::new().when([lead.holds()]).and_then([TxnOp::put(key, value, None)]);
    let mut kv = client.kv_client();
    if cluster::timed(kv.txn(txn)).await?.succeeded() {
        Ok(())
    } else {
        Err(JobsError::Deposed(lead.term))
    }
}

/// One job.
pub async fn get(client: &Client, id: &str) -> Result<Option<pb::Job>, JobsError> {
    let mut kv = client.kv_client();
    let answer = cluster::timed(kv.get(job_key(id), None)).await?;
    answer.kvs().first().map(|kv| decode(kv.key(), kv.value()).map(|(job, _)| job)).transpose()
}

/// Every job with its model, and the ids of jobs whose cancellation was requested.
pub async fn load(client: &Client) -> Result<(Vec<(pb::Job, ModelGeometry)>, HashSet<String>), JobsError> {
    let mut kv = client.kv_client();
    let jobs = cluster::timed(kv.get(JOBS, Some(GetOptions::new().with_prefix()))).await?;
    let mut out = Vec::with_capacity(jobs.kvs().len());
    for kv in jobs.kvs() {
        out.push(decode(kv.key(), kv.value())?);
    }
    let cancels = cluster::timed(kv.get(CANCELS, Some(GetOptions::new().with_prefix().with_keys_only()))).await?;
    let cancelled =
        cancels.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(CANCELS).map(str::to_string)).collect();
    Ok((out, cancelled))
}

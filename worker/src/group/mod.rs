//! Shard groups: the devices that evaluate one window together, one thread per device, each holding its
//! shard of the transformer and its communicator.
//!
//! A group is the unit the coordinator schedules: a worker with eight devices runs one group of eight,
//! two of four or eight of one. A rank that fails (an error, a panic, a lost device) aborts its
//! communicator so that its peers stop waiting, the evaluation fails, and the group is re-formed with new
//! threads and communicators before it takes work again.

pub mod devices;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

pub use self::devices::{shard_groups, DeviceList, DeviceName};
use crate::collective::CpuCollective;
use crate::model::dit::parallel::Comm;
use crate::model::dit::WanTransformer;
use crate::model::ModelError;

/// Builds one rank's transformer shard on its device, for its communicator.
pub type ShardLoader = Arc<dyn Fn(&Device, Comm) -> Result<WanTransformer, ModelError> + Send + Sync>;

/// Why an evaluation on a group failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shard group {group}: rank {rank} ({device}) failed: {message}")]
pub struct RankFailure {
    pub group: usize,
    pub rank: usize,
    pub device: DeviceName,
    pub message: String,
}

/// One evaluation handed to every rank.
struct Job {
    hidden: Tensor,
    timestep: Tensor,
    text: Tensor,
    reply: mpsc::Sender<(usize, Result<Option<Tensor>, String>)>,
}

struct Rank {
    jobs: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

/// A started group.
pub struct ShardGroup {
    index: usize,
    devices: Vec<DeviceName>,
    loader: ShardLoader,
    ranks: Vec<Rank>,
    /// Traffic of the last formation's ranks, by rank.
    comms: Vec<Comm>,
    /// Test hook: rank + 1 to fail at its next evaluation, or 0.
    fault: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ShardGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGroup").field("index", &self.index).field("devices", &self.devices).finish()
    }
}

/// How a rank talks to its peers, made before the rank threads start.
enum CommSeed {
    Cpu(CpuCollective),
    #[cfg(feature = "cuda")]
    Nccl(crate::collective::nccl::NcclSeed),
}

impl CommSeed {
    fn for_group(devices: &[DeviceName]) -> Result<Vec<CommSeed>, ModelError> {
        let world = devices.len();
        if devices.iter().all(|d| !d.is_cuda()) {
            return Ok(CpuCollective::group(world).into_iter().map(CommSeed::Cpu).collect());
        }
        if !devices.iter().all(|d| d.is_cuda()) {
            return Err(ModelError::input("devices", "a shard group cannot mix CPU and CUDA devices"));
        }
        #[cfg(feature = "cuda")]
        {
            crate::collective::nccl::NcclSeed::for_group(world)
                .map(|seeds| seeds.into_iter().map(CommSeed::Nccl).collect())
        }
        #[cfg(not(feature = "cuda"))]
        Err(ModelError::input(
            "devices",
            format!("{}: this build has no CUDA support (build with --features cuda: tools/cuda/build.sh)", devices[0]),
        ))
    }

    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn open(self, device: &Device) -> Result<Comm, ModelError> {
        match self {
            CommSeed::Cpu(comm) => Ok(Arc::new(comm) as Comm),
            #[cfg(feature = "cuda")]
            CommSeed::Nccl(seed) => seed.open(device),
        }
    }
}

impl ShardGroup {
    /// Starts a thread per device and loads every rank's shard; fails if any rank cannot load.
    pub fn start(index: usize, devices: Vec<DeviceName>, loader: ShardLoader) -> Result<Self, ModelError> {
        let mut group = ShardGroup {
            index,
            devices,
            loader,
            ranks: Vec::new(),
            comms: Vec::new(),
            fault: Arc::new(AtomicUsize::new(0)),
        };
        group.form()?;
        Ok(group)
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn devices(&self) -> &[DeviceName] {
        &self.devices
    }

    /// Bytes all-reduced by rank 0 since the group was last formed.
    pub fn bytes_all_reduced(&self) -> u64 {
        self.comms.first().map_or(0, |c| c.stats().bytes_all_reduced())
    }

    /// Makes `rank` fail at its next evaluation, as a lost device would (for tests).
    pub fn inject_fault(&self, rank: usize) {
        self.fault.store(rank + 1, Ordering::SeqCst);
    }

    fn form(&mut self) -> Result<(), ModelError> {
        self.stop();
        let seeds = CommSeed::for_group(&self.devices)?;
        let (ready_tx, ready_rx) = mpsc::channel();
        for (rank, seed) in seeds.into_iter().enumerate() {
            let (jobs, inbox) = mpsc::channel::<Job>();
            let (device, loader, ready, fault) =
                (self.devices[rank], self.loader.clone(), ready_tx.clone(), self.fault.clone());
            let thread = std::thread::Builder::new()
                .name(format!("group{}-rank{rank}", self.index))
                .spawn(move || rank_main(rank, device, seed, loader, ready, inbox, fault))
                .map_err(|e| ModelError::input("devices", format!("starting a rank thread: {e}")))?;
            self.ranks.push(Rank { jobs, thread: Some(thread) });
        }
        drop(ready_tx);
        let mut comms: Vec<Option<Comm>> = vec![None; self.devices.len()];
        let mut first_error = None;
        for _ in 0..self.devices.len() {
            match ready_rx.recv() {
                Ok((rank, Ok(comm))) => comms[rank] = Some(comm),
                Ok((rank, Err(e))) => {
                    first_error.get_or_insert((rank, e));
                }
                Err(_) => break,
            }
        }
        if let Some((rank, error)) = first_error {
            for comm in comms.iter().flatten() {
                comm.abort("a peer failed to load");
            }
            self.stop();
            tracing::error!(group = self.index, rank, %error, "shard group failed to form");
            return Err(error);
        }
        self.comms = comms.into_iter().flatten().collect();
        if self.comms.len() != self.devices.len() {
            self.stop();
            return Err(ModelError::input(
                "devices",
                format!("shard group {}: a rank thread died while loading", self.index),
            ));
        }
        Ok(())
    }

    /// Stops the rank threads (they finish the job at hand first).
    fn stop(&mut self) {
        let ranks = std::mem::take(&mut self.ranks);
        let threads: Vec<_> = ranks.into_iter().filter_map(|mut r| r.thread.take()).collect();
        for thread in threads {
            let _ = thread.join();
        }
        self.comms.clear();
    }

    /// Re-forms the group after a failure: new threads, new communicators, shards loaded again.
    pub fn reform(&mut self) -> Result<(), ModelError> {
        tracing::warn!(group = self.index, devices = ?self.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(), "re-forming shard group");
        self.form()
    }

    /// The transformer's output for the inputs (on the CPU), evaluated by every rank together; returned
    /// on the CPU in the model dtype.
    pub fn forward(&self, hidden: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor, RankFailure> {
        let (reply, answers) = mpsc::channel();
        let fail =
            |rank: usize, message: String| RankFailure { group: self.index, rank, device: self.devices[rank], message };
        for (rank, r) in self.ranks.iter().enumerate() {
            let job =
                Job { hidden: hidden.clone(), timestep: timestep.clone(), text: text.clone(), reply: reply.clone() };
            if r.jobs.send(job).is_err() {
                for comm in &self.comms {
                    comm.abort("a rank thread is gone");
                }
                return Err(fail(rank, "its thread is gone".into()));
            }
        }
        drop(reply);
        let mut output = None;
        let mut failures = Vec::new();
        for _ in 0..self.ranks.len() {
            match answers.recv() {
                Ok((0, Ok(out))) => output = out,
                Ok((_, Ok(_))) => {}
                Ok((rank, Err(message))) => {
                    // Peers blocked in a collective with the failed rank stop waiting (NCCL ranks do not
                    // see each other's aborts otherwise).
                    for comm in &self.comms {
                        comm.abort(&message);
                    }
                    failures.push((rank, message));
                }
                Err(_) => {
                    failures.push((0, "a rank thread ended without answering".into()));
                    break;
                }
            }
        }
        // The rank whose own failure started it, rather than the peers that saw the abort.
        failures.sort_by_key(|(rank, message)| (message.starts_with("collective aborted"), *rank));
        if let Some((rank, message)) = failures.into_iter().next() {
            return Err(fail(rank, message));
        }
        output.ok_or_else(|| fail(0, "rank 0 returned no output".into()))
    }
}

impl Drop for ShardGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A rank's thread: open the device and communicator, load the shard, then evaluate jobs until the group
/// drops its sender.
fn rank_main(
    rank: usize,
    device: DeviceName,
    seed: CommSeed,
    loader: ShardLoader,
    ready: mpsc::Sender<(usize, Result<Comm, ModelError>)>,
    jobs: mpsc::Receiver<Job>,
    fault: Arc<AtomicUsize>,
) {
    let loaded = (|| {
        let dev = device.open()?;
        let comm = seed.open(&dev)?;
        let model = loader(&dev, comm.clone())?;
        Ok::<_, ModelError>((dev, comm, model))
    })();
    let (dev, comm, model) = match loaded {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send((rank, Err(e)));
            return;
        }
    };
    // CPU ranks share the machine's cores: each computes on its own share of them rather than every rank
    // spreading its matrix products over all cores at once.
    let pool = match device {
        DeviceName::Cpu(_) if comm.world() > 1 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            rayon::ThreadPoolBuilder::new()
                .num_threads((cores / comm.world()).max(1))
                .thread_name(move |i| format!("rank{rank}-cpu{i}"))
                .build()
                .ok()
        }
        _ => None,
    };
    if ready.send((rank, Ok(comm.clone()))).is_err() {
        return;
    }
    drop(ready);
    for job in jobs {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if fault.compare_exchange(rank + 1, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Err("injected fault".to_string());
            }
            let run = || evaluate(&model, &dev, rank, &job).map_err(|e| e.to_string());
            match &pool {
                Some(pool) => pool.install(run),
                None => run(),
            }
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("panicked: {what}"))
        });
        if let Err(message) = &result {
            comm.abort(message);
        }
        let _ = job.reply.send((rank, result));
    }
}

fn evaluate(model: &WanTransformer, dev: &Device, rank: usize, job: &Job) -> Result<Option<Tensor>, ModelError> {
    let out = model.forward(&job.hidden.to_device(dev)?, &job.timestep.to_device(dev)?, &job.text.to_device(dev)?)?;
    Ok(if rank == 0 { Some(out.to_device(&Device::Cpu)?) } else { None })
}

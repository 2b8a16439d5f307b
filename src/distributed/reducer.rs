//! Reducers: how the parts of every rank are summed. [`LocalReducer`] (one rank),
//! [`ThreadReducer`] (ranks are threads of one process, e.g. burn-train's multi-device
//! workers), [`CollectiveReducer`] (burn's collective `all_reduce`, CUDA in burn 0.22), and
//! [`SharedReducer`] (any of them behind an `Arc`, to live inside a burn `Module`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use super::parts::{Parts, host};
use crate::error::Error;

/// Sums statistics over data-parallel ranks. Each rank calls [`reduce`](Self::reduce) with its
/// local parts (already summed over its micro-batches) and gets the global totals.
///
/// Every rank must make the same sequence of calls with values of the same length (as with
/// any collective); a rank that skips a call leaves the others waiting.
pub trait Reducer: Send + Sync {
    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Element-wise sum of `local` over all ranks (every rank receives the same totals).
    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>>;

    /// Tells the other ranks that this rank failed, so that they stop waiting for it: call it
    /// on a rank's error path (a shape error, out of memory, a bad batch) **instead of** the
    /// collective call the rank will not make. Every rank waiting in (or later entering)
    /// [`sum`](Self::sum) returns [`Error::Collective`] carrying `reason` at once, and the
    /// group is broken afterwards. The crate's burn-train adapters call it before they panic
    /// on an error. No-op for a single rank ([`LocalReducer`]).
    fn abort(&self, reason: &str) {
        let _ = reason;
    }

    /// The global parts from this rank's local parts: **one** call of [`sum`](Self::sum) for
    /// any number of statistics packed as a tuple (see [`Parts`]).
    fn reduce<P: Parts>(&self, local: &P) -> crate::Result<P>
    where
        Self: Sized,
    {
        Ok(P::from_values(&self.sum(&local.to_values())?))
    }
}

/// A single rank: the totals are the local values (gradient accumulation only). To simulate
/// several ranks sequentially in one thread, sum the shards' parts with
/// [`sum_parts`](super::sum_parts).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalReducer;

impl Reducer for LocalReducer {
    fn world_size(&self) -> usize {
        1
    }
    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>> {
        Ok(local.to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Threads of one process
// ---------------------------------------------------------------------------------------------

/// An all-reduce (`Sum`) between `world_size` threads of one process: each call blocks until
/// every rank has called, then all of them return the same totals (a barrier that adds).
///
/// This is the collective for data parallelism inside one process on devices that burn 0.22
/// has no collective for (Flex, wgpu, the CubeCL CPU runtime): burn-train's
/// [`MultiDevice`](burn::train::ExecutionStrategy::MultiDevice) strategy runs one worker thread
/// per device and sums the gradients on the main device, and a [`SharedReducer`] over one
/// `ThreadReducer` in the model lets the workers agree on the step's counts and batch-coupled
/// statistics (see [`PreferenceModel::with_reducer`](crate::train::PreferenceModel::with_reducer)).
///
/// Clones are handles to the same group. The ranks are anonymous: whichever `world_size`
/// calls arrive first form a round, and the totals are added in arrival order (`f64`; the
/// order changes the result by at most a few ulps).
///
/// # Failures
///
/// - A rank that fails calls [`Reducer::abort`] on its error path (the crate's burn-train
///   adapters do): every waiting rank returns [`Error::Collective`] with that rank's reason at
///   once, instead of waiting out the timeout.
/// - A rank that does not arrive within the timeout makes the round fail with
///   [`Error::Collective`] on every waiting rank. The **first** round has its own, much longer
///   timeout (default 30 min, [`with_first_round_timeout`](Self::with_first_round_timeout)):
///   on CubeCL devices the first step JIT-compiles and autotunes its kernels, which is slow
///   but no fault. Later rounds wait [`with_timeout`](Self::with_timeout) (default 60 s).
/// - After a failure the group stays broken (as a collective group does): every later call
///   returns the first failure's reason.
/// - A rank with fewer batches than the others is the common cause of a missing rank: see
///   [`EqualShards`](super::EqualShards) for burn-train's `MultiDevice` split.
///
/// Costs: no device work and no host read of its own (the values are host `f64`).
#[derive(Debug, Clone)]
pub struct ThreadReducer {
    group: Arc<ThreadGroup>,
    timeout: Duration,
    first_round_timeout: Option<Duration>,
}

#[derive(Debug)]
struct ThreadGroup {
    world_size: usize,
    round: Mutex<Round>,
    finished: Condvar,
    calls: AtomicU64,
}

#[derive(Debug)]
struct Round {
    generation: u64,
    arrived: usize,
    sum: Vec<f64>,
    mismatch: Option<(usize, usize)>,
    result: Result<Vec<f64>, String>,
    broken: Option<String>,
}

impl ThreadReducer {
    /// A group of `world_size` ranks (`>= 1`). Give one clone to each rank's thread.
    pub fn new(world_size: usize) -> crate::Result<Self> {
        if world_size == 0 {
            return Err(Error::config("world_size", "must be >= 1", world_size));
        }
        Ok(Self {
            group: Arc::new(ThreadGroup {
                world_size,
                round: Mutex::new(Round {
                    generation: 0,
                    arrived: 0,
                    sum: Vec::new(),
                    mismatch: None,
                    result: Ok(Vec::new()),
                    broken: None,
                }),
                finished: Condvar::new(),
                calls: AtomicU64::new(0),
            }),
            timeout: Duration::from_secs(60),
            first_round_timeout: Some(Duration::from_secs(30 * 60)),
        })
    }

    /// How long a rank waits for the others before a round after the first fails (default
    /// 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a rank waits in the **first** round (default 30 min; `None`: no limit). The
    /// first step includes kernel compilation and autotuning on CubeCL devices.
    pub fn with_first_round_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.first_round_timeout = timeout;
        self
    }

    /// Completed reductions so far (one per round, whatever the number of ranks): what a test
    /// counts to check "one collective call per step".
    pub fn calls(&self) -> u64 {
        self.group.calls.load(Ordering::SeqCst)
    }

    fn error(&self, reason: String) -> Error {
        Error::Collective {
            op: "sum",
            world_size: self.group.world_size,
            reason,
        }
    }
}

impl Reducer for ThreadReducer {
    fn world_size(&self) -> usize {
        self.group.world_size
    }

    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>> {
        let group = &self.group;
        let mut round = group.round.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &round.broken {
            return Err(self.error(format!("the group is broken: {reason}")));
        }
        if round.arrived == 0 {
            round.sum = local.to_vec();
            round.mismatch = None;
        } else if round.sum.len() != local.len() {
            let first = round.sum.len();
            round.mismatch.get_or_insert((first, local.len()));
        } else {
            for (total, value) in round.sum.iter_mut().zip(local) {
                *total += value;
            }
        }
        round.arrived += 1;
        let generation = round.generation;
        if round.arrived == group.world_size {
            round.result = match round.mismatch {
                None => Ok(std::mem::take(&mut round.sum)),
                Some((first, other)) => Err(format!(
                    "the ranks sent different lengths ({first} and {other} values)"
                )),
            };
            round.arrived = 0;
            round.generation += 1;
            group.calls.fetch_add(1, Ordering::SeqCst);
            group.finished.notify_all();
            return round.result.clone().map_err(|r| self.error(r));
        }
        let timeout = if generation == 0 {
            self.first_round_timeout
        } else {
            Some(self.timeout)
        };
        let waiting = |r: &mut Round| r.generation == generation && r.broken.is_none();
        let mut round = match timeout {
            Some(limit) => {
                group
                    .finished
                    .wait_timeout_while(round, limit, waiting)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => group
                .finished
                .wait_while(round, waiting)
                .unwrap_or_else(|p| p.into_inner()),
        };
        if round.generation == generation {
            let reason = match &round.broken {
                Some(reason) => reason.clone(),
                None => {
                    let reason = format!(
                        "{} of {} ranks arrived within {:?}{} (a rank skipped the call or \
                         has fewer batches: see EqualShards)",
                        round.arrived,
                        group.world_size,
                        timeout.unwrap_or_default(),
                        if generation == 0 {
                            ", the first round's timeout"
                        } else {
                            ""
                        }
                    );
                    round.broken = Some(reason.clone());
                    group.finished.notify_all();
                    reason
                }
            };
            return Err(self.error(reason));
        }
        round.result.clone().map_err(|r| self.error(r))
    }

    fn abort(&self, reason: &str) {
        let group = &self.group;
        let mut round = group.round.lock().unwrap_or_else(|p| p.into_inner());
        if round.broken.is_none() {
            round.broken = Some(format!("a rank failed: {reason}"));
        }
        group.finished.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Shared handle
// ---------------------------------------------------------------------------------------------

/// Any [`Reducer`] behind an `Arc`: cheap to clone into each replica of a model, and usable
/// as a `#[module(skip)]` field of a burn `Module` (the burn-train adapters hold one).
#[derive(Clone)]
pub struct SharedReducer(Arc<dyn Reducer>);

impl SharedReducer {
    /// Wraps `reducer`.
    pub fn new(reducer: impl Reducer + 'static) -> Self {
        Self(Arc::new(reducer))
    }
}

impl std::fmt::Debug for SharedReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedReducer(world_size = {})", self.0.world_size())
    }
}

impl Reducer for SharedReducer {
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>> {
        self.0.sum(local)
    }
    fn abort(&self, reason: &str) {
        self.0.abort(reason)
    }
}

// ---------------------------------------------------------------------------------------------
// burn's collective
// ---------------------------------------------------------------------------------------------

/// burn's collective all-reduce (`ReduceOperation::Sum`) across `devices`, called by the rank
/// that owns `device`.
///
/// Requirements (burn 0.22): a
/// [`DistributedContext`](burn::tensor::distributed::DistributedContext) started over the same
/// devices lives for the duration; every rank calls [`Reducer::sum`] with values of the same
/// length, concurrently (one thread per device); the backend implements the collective ops:
/// in burn 0.22 that is CUDA only (NCCL). For every other device this reducer returns
/// [`Error::Device`] instead of panicking inside burn (see the [module docs](super) for the
/// code path).
///
/// The values travel as one `[k]` tensor, f64 where the device supports it (else f32: counts
/// are exact up to 2^24).
#[derive(Debug, Clone)]
pub struct CollectiveReducer {
    device: Device,
    devices: Vec<Device>,
}

impl CollectiveReducer {
    /// The reducer of the rank on `device`, among `devices` (all ranks, same order everywhere).
    pub fn new(device: Device, devices: Vec<Device>) -> crate::Result<Self> {
        if devices.is_empty() || !devices.contains(&device) {
            return Err(Error::Device {
                arg: "device",
                reason: format!("must be one of `devices` ({} given)", devices.len()),
            });
        }
        Ok(Self { device, devices })
    }

    /// Whether burn 0.22 runs collective ops on this device (CUDA only: cubecl's CUDA server
    /// is the only one with a device transport). Read from the device's debug name: burn does
    /// not expose the backend kind.
    pub fn supports(device: &Device) -> bool {
        format!("{device:?}").contains("Cuda")
    }
}

impl Reducer for CollectiveReducer {
    fn world_size(&self) -> usize {
        self.devices.len()
    }

    fn sum(&self, local: &[f64]) -> crate::Result<Vec<f64>> {
        if !Self::supports(&self.device) {
            return Err(Error::Device {
                arg: "device",
                reason: format!(
                    "burn 0.22 runs a collective all_reduce only on CUDA devices (NCCL); {:?} has \
                     none: use ThreadReducer for ranks in one process, or LocalReducer and \
                     sum_parts to simulate ranks",
                    self.device
                ),
            });
        }
        let dtype = if self.device.supports_dtype(FloatDType::F64) {
            FloatDType::F64
        } else {
            FloatDType::F32
        };
        let device = self.device.clone().without_autodiff();
        let x = Tensor::<1>::from_data(
            TensorData::new(local.to_vec(), [local.len()]),
            (&device, burn::tensor::DType::from(dtype)),
        );
        let reduced = all_reduce(x, ReduceOperation::Sum, self.devices.clone()).resolve();
        Ok(host(reduced))
    }
}

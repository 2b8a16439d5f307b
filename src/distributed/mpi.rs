//! MPI across processes and hosts (feature `mpi`): [`MpiRuntime`] starts MPI for the
//! process, [`MpiReducer`] all-reduces over its `MPI_COMM_WORLD`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::Reducer;
use crate::error::{Error, Result};

/// Bytes of a failing rank's message that reach the other ranks.
const MESSAGE_BYTES: usize = 2048;

/// Environment variables that the common launchers set in every rank: Open MPI's `mpirun`,
/// MPICH's / Intel MPI's Hydra (`mpiexec`), and PMIx (`srun --mpi=pmix`, PRRTE).
const LAUNCHER_VARS: [&str; 5] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMI_RANK",
    "PMIX_RANK",
    "PMIX_NAMESPACE",
];

/// MPI for this process: initialized by [`init`](Self::init), finalized when dropped. Keep it
/// in `main` for the whole run (drop it last, on the thread that created it) and hand
/// [`reducer`](Self::reducer)s to the training code.
///
/// ```no_run
/// # fn main() -> burn_rlhf::Result<()> {
/// use burn_rlhf::distributed::{MpiRuntime, Reducer};
/// let mpi = MpiRuntime::init()?; // `mpirun -np 2 ./trainer`
/// mpi.abort_on_panic();
/// let reducer = mpi.reducer();
/// let total = reducer.sum(&[mpi.rank() as f64])?; // [0 + 1] on every rank
/// # Ok(()) }
/// ```
pub struct MpiRuntime {
    // Dropped last: `MPI_Finalize`.
    _universe: Universe,
    state: Arc<State>,
}

impl std::fmt::Debug for MpiRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.state.describe("MpiRuntime", f)
    }
}

impl MpiRuntime {
    /// Initializes MPI (`MPI_Init_thread`, `MPI_THREAD_SERIALIZED`: the reducer serializes
    /// its own calls, so any thread may use it).
    ///
    /// Errors ([`Error::Runtime`]):
    /// - the process was not started by an MPI launcher (`mpirun` / `mpiexec` / `srun
    ///   --mpi=pmix`: none of `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `PMI_RANK`, `PMIX_RANK`,
    ///   `PMIX_NAMESPACE` is set). A lone process would silently train alone;
    ///   [`init_singleton`](Self::init_singleton) asks for that explicitly;
    /// - MPI is already initialized in this process (use [`MpiReducer::world`] with the
    ///   caller's own initialization) or was finalized.
    ///
    /// Where the library provides less than `MPI_THREAD_SERIALIZED`, the reducers refuse
    /// calls from other threads than this one.
    pub fn init() -> Result<Self> {
        if !launched() {
            return Err(Error::Runtime {
                runtime: "MPI",
                reason: format!(
                    "this process was not started by an MPI launcher (none of {} is set): run \
                     it as `mpirun -np <ranks> <binary>` (Open MPI; add `--hostfile <file>` for \
                     several hosts), `mpiexec -n <ranks> <binary>` (MPICH) or `srun --mpi=pmix \
                     <binary>` (Slurm); MpiRuntime::init_singleton() runs one rank without a \
                     launcher",
                    LAUNCHER_VARS.join(", ")
                ),
            });
        }
        Self::init_singleton()
    }

    /// [`init`](Self::init) without the launcher check: a process started alone becomes a
    /// world of one rank (MPI's singleton initialization).
    pub fn init_singleton() -> Result<Self> {
        if mpi::is_finalized() {
            return Err(Error::Runtime {
                runtime: "MPI",
                reason: "MPI was already finalized in this process (MPI can be initialized once \
                         per process)"
                    .into(),
            });
        }
        let Some((universe, provided)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            return Err(Error::Runtime {
                runtime: "MPI",
                reason: "MPI is already initialized in this process: keep that initialization \
                         and use MpiReducer::world()"
                    .into(),
            });
        };
        let state = State::world(provided)?;
        Ok(Self {
            _universe: universe,
            state: Arc::new(state),
        })
    }

    /// This process's rank in `MPI_COMM_WORLD`.
    pub fn rank(&self) -> usize {
        self.state.rank
    }

    /// Number of ranks in `MPI_COMM_WORLD`.
    pub fn world_size(&self) -> usize {
        self.state.size
    }

    /// A reducer over `MPI_COMM_WORLD` (clones share one state: calls, failures).
    pub fn reducer(&self) -> MpiReducer {
        MpiReducer {
            state: self.state.clone(),
        }
    }

    /// Installs a panic hook that prints the panic (the previous hook) and then calls
    /// `MPI_Abort` on `MPI_COMM_WORLD`: the launcher then stops every rank. Without it a rank
    /// that panics unwinds into `MPI_Finalize`, which waits for the other ranks, and they wait
    /// in their next collective for it. (A rank that *returns* an error should call
    /// [`Reducer::abort`] instead: the others then fail with its message.)
    pub fn abort_on_panic(&self) {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            SimpleCommunicator::world().abort(101);
        }));
    }
}

fn add_nanos(counter: &AtomicU64, since: Instant) {
    let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(nanos, Ordering::SeqCst);
}

/// MPI's thread-support levels in their order.
fn level(threading: mpi::Threading) -> u8 {
    match threading {
        mpi::Threading::Single => 0,
        mpi::Threading::Funneled => 1,
        mpi::Threading::Serialized => 2,
        mpi::Threading::Multiple => 3,
    }
}

fn launched() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// What every handle shares: the communicator's size and rank, the lock that serializes this
/// process's MPI calls, and the broken flag.
struct State {
    rank: usize,
    size: usize,
    threading: mpi::Threading,
    init_thread: ThreadId,
    broken: Mutex<Option<String>>,
    calls: AtomicU64,
    /// Nanoseconds in the header rounds (waiting for the slowest rank) and the data rounds.
    wait_nanos: AtomicU64,
    data_nanos: AtomicU64,
}

impl State {
    /// `Name(rank r of n)`: the `Debug` form of the handles.
    fn describe(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{name}(rank {} of {})", self.rank, self.size)
    }

    fn world(threading: mpi::Threading) -> Result<Self> {
        let world = SimpleCommunicator::world();
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            threading,
            init_thread: std::thread::current().id(),
            broken: Mutex::new(None),
            calls: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            data_nanos: AtomicU64::new(0),
        })
    }
}

/// The [`Reducer`] over MPI's `MPI_COMM_WORLD`: [`sum`](Reducer::sum) is `MPI_Allreduce`
/// with `MPI_SUM` on `f64`, so the step's packed [`Parts`](super::Parts) take one call and
/// [`sum_gradients`](super::sum_gradients) one more, as with the other reducers. The ranks
/// are processes, on one host or many: nothing here assumes one host.
///
/// # Exactness
///
/// The values are `f64` and summed by MPI; every rank receives the same totals (Open MPI and
/// MPICH compute one result and distribute it, so the ranks' parameters stay bitwise equal;
/// the tests check it). Against one process on the whole batch the sums differ only in the
/// order of `f64` additions.
///
/// # Agreement and failures
///
/// Every call first all-reduces a small header (`MPI_MAX` over `[len, -len, failed]`), so:
/// - ranks that send different lengths all get [`Error::Collective`] naming both lengths
///   (MPI itself would truncate or hang);
/// - a rank that calls [`Reducer::abort`] on its error path makes every other rank's
///   current or next call return [`Error::Collective`] with `rank <r> failed: <its
///   message>`, at once. The group is broken afterwards: later calls fail without MPI traffic.
///
/// A rank that dies without calling `abort` (a crash, a kill, a panic with
/// [`MpiRuntime::abort_on_panic`]) is handled by the launcher: Open MPI's `mpirun` stops every
/// rank when one exits abnormally.
///
/// # Threads
///
/// MPI is initialized with `MPI_THREAD_SERIALIZED`; every handle takes one lock per call, so
/// threads of a process may share it (one collective at a time per process). Where the
/// library provides less (or the caller initialized MPI with rsmpi's default,
/// `MPI_THREAD_SINGLE`), calls from another thread than the one that created the reducer are
/// refused with [`Error::Runtime`].
#[derive(Clone)]
pub struct MpiReducer {
    state: Arc<State>,
}

impl std::fmt::Debug for MpiReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.state.describe("MpiReducer", f)
    }
}

impl MpiReducer {
    /// A reducer over `MPI_COMM_WORLD` of an MPI that the caller initialized (rsmpi's
    /// `mpi::initialize` or `mpi::initialize_with_threading`, kept alive by the caller); call
    /// it on the thread that initialized MPI, once, and clone the result (clones share the
    /// lock that serializes the process's MPI calls). Errors ([`Error::Runtime`]): MPI not
    /// initialized, or finalized.
    pub fn world() -> Result<Self> {
        if !mpi::is_initialized() || mpi::is_finalized() {
            return Err(Error::Runtime {
                runtime: "MPI",
                reason: "MPI is not initialized in this process: use MpiRuntime::init(), or \
                         initialize it with rsmpi first"
                    .into(),
            });
        }
        Ok(Self {
            state: Arc::new(State::world(mpi::environment::threading_support())?),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.state.rank
    }

    /// Completed reductions so far (what a test counts to check "one call per step").
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Time spent in this process's reductions so far: `(waiting, moving data)`. Each call's
    /// header round ends when the slowest rank arrives, so `waiting` is mostly the time this
    /// rank waited for the others (load imbalance); `moving data` is the `MPI_Allreduce` of
    /// the values themselves.
    pub fn timings(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.state.wait_nanos.load(Ordering::SeqCst)),
            Duration::from_nanos(self.state.data_nanos.load(Ordering::SeqCst)),
        )
    }

    fn error(&self, reason: String) -> Error {
        Error::Collective {
            op: "sum",
            world_size: self.state.size,
            reason,
        }
    }

    fn check_usable(&self) -> Result<()> {
        if mpi::is_finalized() {
            return Err(Error::Runtime {
                runtime: "MPI",
                reason: "MPI was finalized (the MpiRuntime was dropped) before this call".into(),
            });
        }
        if level(self.state.threading) < level(mpi::Threading::Serialized)
            && std::thread::current().id() != self.state.init_thread
        {
            return Err(Error::Runtime {
                runtime: "MPI",
                reason: format!(
                    "MPI provides {:?} thread support here: call the reducer from the thread \
                     that initialized MPI",
                    self.state.threading
                ),
            });
        }
        Ok(())
    }

    /// The header round: every rank's `[len, -len, failed]`, maximized.
    fn header(world: &SimpleCommunicator, len: usize, failed: bool) -> [f64; 3] {
        let send = [len as f64, -(len as f64), if failed { 1.0 } else { 0.0 }];
        let mut max = [0.0f64; 3];
        world.all_reduce_into(&send[..], &mut max[..], SystemOperation::max());
        max
    }

    /// The failure round (after a header with `failed`): the lowest failing rank broadcasts
    /// its message. `own` is this rank's message if it is failing.
    fn failure(world: &SimpleCommunicator, own: Option<&str>) -> String {
        let size = world.size();
        let candidate = if own.is_some() { world.rank() } else { size };
        let mut root = 0i32;
        world.all_reduce_into(&candidate, &mut root, SystemOperation::min());
        let mut buffer = [0u8; MESSAGE_BYTES];
        if let Some(message) = own.filter(|_| root == world.rank()) {
            let bytes = message.as_bytes();
            let n = bytes.len().min(MESSAGE_BYTES);
            buffer[..n].copy_from_slice(&bytes[..n]);
        }
        world.process_at_rank(root).broadcast_into(&mut buffer[..]);
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(MESSAGE_BYTES);
        format!(
            "rank {root} failed: {}",
            String::from_utf8_lossy(&buffer[..end])
        )
    }
}

impl Reducer for MpiReducer {
    fn world_size(&self) -> usize {
        self.state.size
    }

    fn sum(&self, local: &[f64]) -> Result<Vec<f64>> {
        let mut broken = self.state.broken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = broken.as_ref() {
            return Err(self.error(format!("the group is broken: {reason}")));
        }
        self.check_usable()?;
        let world = SimpleCommunicator::world();
        let started = Instant::now();
        let [max_len, neg_min_len, failed] = Self::header(&world, local.len(), false);
        add_nanos(&self.state.wait_nanos, started);
        if failed > 0.0 {
            let reason = Self::failure(&world, None);
            *broken = Some(reason.clone());
            return Err(self.error(reason));
        }
        if max_len != -neg_min_len {
            return Err(self.error(format!(
                "the ranks sent different lengths (between {} and {max_len} values; this rank \
                 {}): every rank must make the same calls",
                -neg_min_len,
                local.len()
            )));
        }
        let mut total = vec![0.0f64; local.len()];
        let started = Instant::now();
        world.all_reduce_into(local, &mut total[..], SystemOperation::sum());
        add_nanos(&self.state.data_nanos, started);
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        Ok(total)
    }

    fn abort(&self, reason: &str) {
        let mut broken = self.state.broken.lock().unwrap_or_else(|p| p.into_inner());
        if broken.is_some() || self.check_usable().is_err() || self.state.size == 1 {
            broken.get_or_insert_with(|| format!("this rank failed: {reason}"));
            return;
        }
        let world = SimpleCommunicator::world();
        Self::header(&world, 0, true);
        let message = Self::failure(&world, Some(reason));
        *broken = Some(message);
    }
}

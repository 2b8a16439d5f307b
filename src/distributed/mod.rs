//! Exact losses inside data-parallel training and gradient accumulation.
//!
//! # The rule
//!
//! One optimizer step sees `W` data-parallel ranks x `G` accumulation micro-batches. Every
//! gradient the step applies must be the gradient of **one** scalar: the loss of the whole
//! step's batch. Two things make that exact:
//!
//! 1. **Global counts.** Each micro-batch loss is reduced with the count of the *whole step*
//!    ([`StepCounts`]: tokens, sequences, pairs, summed over micro-batches and all-reduced over
//!    ranks) through [`Normalizer::GlobalTokens`] / [`Normalizer::GlobalSequences`]. The
//!    micro-batch losses then **sum** to the whole-batch loss, so the gradients must be
//!    **summed**: accumulate micro-batch gradients without dividing by `G`, and all-reduce
//!    gradients across ranks with `Sum` (not `Mean`). If your framework averages over ranks
//!    (DDP's default) or divides by `G`, multiply the loss by `W` (resp. `G`) instead; that is
//!    what TRL's `num_processes` / OpenRLHF's `dp_size` factors do.
//! 2. **Cross-rank statistics.** A loss whose per-example terms depend on a batch statistic
//!    (KTO's KL estimate, BCO's running mean, GRPO's batch-scaled advantages, whitening) must
//!    use the statistic of the whole step. Each is written here as *parts that add*:
//!    [`KlParts`] (`sum`, `count`) and [`MomentParts`] (`sum`, `sum_sq`, `count`). Build them
//!    from the local batch (one small host read), sum them over micro-batches and ranks
//!    ([`Reducer`] / [`sum_parts`]), and finish them into the statistic:
//!    - KTO: [`KlParts::finish`] -> `max(0, sum / count)` (detached) -> [`UnpairedBatch::with_kl`].
//!    - BCO: [`MomentParts::update_running`] folds the step's rewards into [`RunningMoments`];
//!      then call [`BcoLoss::forward`] with `train = false` on every micro-batch.
//!    - GRPO `scale_rewards = batch` (and GDPO's batch normalization):
//!      [`GroupAdvantageConfig::batch_reward_parts`] ->
//!      [`GroupAdvantageConfig::try_forward_with_batch_stats`] (groups must not be split across
//!      shards: a prompt's `G` completions stay together).
//!    - Whitening: [`MomentParts::from_masked`] -> [`whiten_with`](crate::rl::whiten_with) (Bessel-corrected variance).
//!
//!    `count`-weighted sums are exact for any shard sizes; TRL's "average the per-rank means"
//!    equals them only when every rank holds the same number of examples.
//!
//! **One collective call per step.** A tuple of parts is itself [`Parts`] (values concatenated
//! in a fixed layout, every rank the same), so the counts and all statistics of a step are
//! reduced together: `let (counts, kl, moments) = reducer.reduce(&(counts, kl, moments))?;`
//! (one small `[k]` tensor, one all-reduce, one host read).
//!
//! The cost of a global statistic is that it must be known before the first backward pass of
//! the step: compute the counts from the masks of all the step's micro-batches (cheap), and the
//! KTO KL estimate from a no-grad forward over the step's mismatched pairs, before training on
//! the micro-batches.
//!
//! # Which reducer
//!
//! | ranks are | reducer | gradients are summed by |
//! |---|---|---|
//! | micro-batches of one process (accumulation only) | [`LocalReducer`] | `GradientsAccumulator` |
//! | threads of one process, one device each (burn-train's `MultiDevice` strategy, any backend) | [`ThreadReducer`] | burn-train (on the main device) |
//! | CUDA devices with burn's collective (burn-train's `DistributedDataParallel`) | [`CollectiveReducer`] | burn's `all_reduce` |
//! | processes, on one host or many (feature `mpi`; `mpirun`, `mpiexec`, `srun`) | `MpiReducer` | [`sum_gradients`] over the same reducer |
//! | simulated, in one thread | [`sum_parts`] over the shards | your loop |
//!
//! [`sum_gradients`] all-reduces a model's gradients through any reducer (one call for all of
//! them, via host memory), for loops that own their optimizer step (the `dpo_mpi` example).
//!
//! # Robust epochs and failures
//!
//! - **Equal steps.** Every rank must take the same number of steps: a rank with one batch
//!   more waits in its last reduction for ranks that have finished. burn's split (burn-train's
//!   `MultiDevice`) gives the last device the remainder; [`check_equal_steps`] (or
//!   `check_loader_split`, feature `train`) refuses such a split at setup, and
//!   [`EqualShards`] cuts an epoch into equal shards of whole batches (drop-last): `truncate`
//!   for burn-train's split, `shard` / `range` for one process per rank.
//! - **A failing rank** calls [`Reducer::abort`] on its error path (the burn-train adapters do
//!   it before they panic): the other ranks' reductions return [`Error::Collective`] with its
//!   message at once, instead of waiting. [`ThreadReducer`] waits at most 60 s for a missing
//!   rank after the first round and 30 min in the first (kernel compilation and autotuning on
//!   CubeCL devices); MPI collectives have no timeout: a rank that dies is the launcher's
//!   business (Open MPI's `mpirun` stops the job), and `MpiRuntime::abort_on_panic` turns a
//!   panic into `MPI_Abort`.
//! - **Gradient accumulation inside burn-train** is not token-exact (each micro-batch is
//!   normalized by its own count): see the [`train`](crate::train) module docs for the error
//!   and when it vanishes.
//!
//! The burn-train adapters take any of them as a [`SharedReducer`]
//! ([`PreferenceModel::with_reducer`](crate::train::PreferenceModel::with_reducer),
//! [`KtoModel::with_reducer`](crate::train::KtoModel::with_reducer)): every training step then
//! reduces its counts (and KTO's KL parts) in one call and normalizes the loss by the global
//! count, so the gradients that burn-train sums equal the gradient of the whole step's batch.
//!
//! # Why burn's collective runs only on CUDA (burn 0.22)
//!
//! [`CollectiveReducer`] sums the parts with burn's collective [`all_reduce`]
//! (`ReduceOperation::Sum`) across the devices of a
//! [`DistributedContext`](burn::tensor::distributed::DistributedContext). The call path:
//! `burn::tensor::distributed::all_reduce` -> burn-dispatch's `DistributedOps::all_reduce`
//! (`burn-dispatch-0.22.1/src/ops/distributed.rs`), whose arms come from
//! `backend_catalog!(distributed, ..)` (`burn-backend-extension-0.22.1/src/catalog.rs`): only
//! the CubeCL backend and Remote are marked `distributed: true`; a Flex or NdArray tensor hits
//! the fallback arm and panics ("Distributed operations are not supported for tensor kind
//! ..."). A CubeCL tensor goes on to cubecl's `ComputeClient::all_reduce`
//! (`cubecl-runtime-0.11.3/src/client.rs`), which first calls `expect_device_transport` and
//! panics unless the runtime has a device transport ("Can't use `all_reduce` on ..., which has
//! no transport between its devices"); only cubecl-cuda implements one (NCCL,
//! `cubecl-cuda-0.11.3/src/compute/communication.rs`). The catalog's own comment says so:
//! the CubeCL entry claims collectives for every runtime "where only CUDA implements them
//! today". So on wgpu (a GPU or lavapipe), the CubeCL CPU runtime, Flex and NdArray there is
//! no burn collective, and [`CollectiveReducer`] returns [`Error::Device`] for them instead of
//! panicking inside burn. burn-train's `DistributedDataParallel` strategy (which all-reduces
//! gradients with the same collective) has the same limit; its `MultiDevice` strategy does not
//! use a collective (workers send gradients to the main device, which sums them) and runs on
//! any backend: pair it with [`ThreadReducer`] (the `dpo_multi_device` example).
//!
//! # Several processes and machines (feature `mpi`)
//!
//! burn 0.22 has no multi-node collective: `DistributedConfig` has no addresses and its sync
//! server is in-process (burn 0.21's `burn-collective` with global/node addresses was removed
//! in 0.22). `MpiRuntime` / `MpiReducer` (feature `mpi`, over the system's Open MPI or MPICH
//! through rsmpi) run the ranks as processes: the launcher (`mpirun -np 4 --hostfile hosts
//! ./trainer`) starts them on one host or many, each process trains on its shard, reduces
//! the step's parts in one call and its gradients with [`sum_gradients`] in another, and
//! takes the same optimizer step. What the user configures: the launch (hosts, ranks per
//! host; every host needs the same binary and data path), the shard of each rank
//! ([`EqualShards::range`]), and nothing else: the crate never assumes one host. Any other
//! transport fits the same seam: a [`Reducer`] whose `sum` adds a `[k]` vector of `f64` over
//! all ranks; [`Parts::to_values`] / [`Parts::from_values`] are the wire format, one `[k]`
//! vector per step.
//!
//! [`Normalizer::GlobalTokens`]: crate::reduce::Normalizer::GlobalTokens
//! [`Normalizer::GlobalSequences`]: crate::reduce::Normalizer::GlobalSequences
//! [`all_reduce`]: burn::tensor::distributed::all_reduce
//! [`Error::Device`]: crate::Error::Device
//! [`Error::Collective`]: crate::Error::Collective
//! [`UnpairedBatch::with_kl`]: crate::losses::UnpairedBatch::with_kl
//! [`RunningMoments`]: crate::losses::RunningMoments
//! [`BcoLoss::forward`]: crate::losses::BcoLoss::forward
//! [`GroupAdvantageConfig::batch_reward_parts`]: crate::rl::GroupAdvantageConfig::batch_reward_parts
//! [`GroupAdvantageConfig::try_forward_with_batch_stats`]: crate::rl::GroupAdvantageConfig::try_forward_with_batch_stats

mod gradients;
#[cfg(feature = "mpi")]
mod mpi;
mod parts;
mod reducer;
mod shards;

pub use gradients::sum_gradients;
#[cfg(feature = "mpi")]
pub use mpi::{MpiReducer, MpiRuntime};
pub use parts::{KlParts, MomentParts, Parts, StepCounts, sum_parts};
pub use reducer::{CollectiveReducer, LocalReducer, Reducer, SharedReducer, ThreadReducer};
#[cfg(feature = "train")]
pub use shards::check_loader_split;
pub use shards::{EqualShards, check_equal_steps, split_steps};

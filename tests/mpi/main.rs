//! MPI across processes (features `mpi` + `train`): `cargo test --features mpi,train --test mpi`.
//!
//! This binary has its own `main` (`harness = false`). Run by cargo, it is the **launcher**:
//! it starts itself under `mpirun -np N` once per case (with `BURN_RLHF_MPI_CASE` naming the
//! case), waits (at most 180 s a case), and fails if any run fails. Started by `mpirun`, it is
//! a **rank** and runs the case. Every rank builds the same data; whole-batch expectations are
//! computed in each rank from the same inputs in one piece, never hard-coded.
//!
//! Cases:
//! - `grads_f64` / `grads_f32`, on 2 and 3 ranks (uneven shards): DPO, KTO with the global
//!   KL, BCO, GRPO with the batch std, PPO with whitening (`tests/common/dp_cases.rs`, the
//!   cases the in-process peers run too): the ranks' summed gradient equals the whole-batch
//!   gradient to 1e-6 (f64) / 1e-5 (f32), identically on every rank, with two MPI reductions
//!   per step;
//! - `module_grads`, 2 and 3 ranks: [`sum_gradients`] over a burn `Linear` module equals the
//!   whole-batch `GradientsParams`;
//! - `rank_error`, 2 ranks: rank 1's training step hits a shape error; rank 0, waiting in the
//!   reduction, fails within a second of it with rank 1's message;
//! - `length_mismatch`, 2 ranks: ranks that send different lengths both get a typed error,
//!   and the group still works afterwards;
//! - `dpo_example`, 1 and 2 ranks: the `dpo_mpi` example (shortened); both print the same
//!   `final:` line and the 2-rank run ends at the single-process parameters;
//! - `no_launcher`: the binary started without `mpirun` gets the documented
//!   [`Error::Runtime`] from `MpiRuntime::init`.
//!
//! The launcher is `mpirun` (`BURN_RLHF_MPIRUN` overrides it, e.g. `mpiexec`); for Open MPI it
//! sets `OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)` and `OMPI_MCA_rmaps_base_oversubscribe` (CI runs as
//! root on 2 cores).
#![allow(clippy::duplicate_mod)]

#[path = "../common/mod.rs"]
pub mod common;
#[path = "../common/dp_cases.rs"]
pub mod dp_cases;
#[path = "../../examples/dpo_mpi.rs"]
pub mod dpo_mpi;

use std::io::Read;
use std::ops::Range;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn::train::TrainStep;
use burn_rlhf::Error;
use burn_rlhf::distributed::{
    MpiReducer, MpiRuntime, Reducer, SharedReducer, StepCounts, sum_gradients,
};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::DpoLossConfig;
use burn_rlhf::train::{CausalLmLogps, PreferenceInput, PreferenceModel};
use dp_cases::{Data, Peers, Step};

const CASE_VAR: &str = "BURN_RLHF_MPI_CASE";

/// `(case, ranks)`; 0 ranks: started without a launcher.
const RUNS: [(&str, usize); 11] = [
    ("grads_f64", 2),
    ("grads_f64", 3),
    ("grads_f32", 2),
    ("grads_f32", 3),
    ("module_grads", 2),
    ("module_grads", 3),
    ("rank_error", 2),
    ("length_mismatch", 2),
    ("dpo_example", 1),
    ("dpo_example", 2),
    ("no_launcher", 0),
];

fn main() {
    match std::env::var(CASE_VAR) {
        Ok(case) => rank_main(&case),
        Err(_) => launcher_main(),
    }
}

// ------------------------------------------------------------------------------- launcher

fn launcher_main() {
    let exe = std::env::current_exe().unwrap();
    let mpirun = std::env::var("BURN_RLHF_MPIRUN").unwrap_or_else(|_| "mpirun".into());
    if Command::new(&mpirun).arg("--version").output().is_err() {
        eprintln!(
            "error: `{mpirun}` not found: these tests start the ranks with an MPI launcher \
             (Debian/Ubuntu: apt install openmpi-bin libopenmpi-dev)"
        );
        std::process::exit(1);
    }
    let mut failed = vec![];
    let mut finals = vec![];
    for (case, ranks) in RUNS {
        let mut cmd = if ranks == 0 {
            Command::new(&exe)
        } else {
            let mut c = Command::new(&mpirun);
            c.args(["-np", &ranks.to_string()]).arg(&exe);
            c
        };
        cmd.env(CASE_VAR, case)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let (ok, out) = run_with_timeout(cmd, Duration::from_secs(180));
        let secs = start.elapsed().as_secs_f64();
        let name = format!("{case} (np {ranks})");
        println!(
            "--- {name}: {} in {secs:.1} s",
            if ok { "ok" } else { "FAILED" }
        );
        for line in out.lines() {
            println!("    {line}");
        }
        if case == "dpo_example" {
            finals.extend(
                out.lines()
                    .filter(|l| l.starts_with("final:"))
                    .map(|l| (ranks, l.to_string())),
            );
        }
        if !ok {
            failed.push(name);
        }
    }
    // The `final:` line of one process and of two processes are the same.
    let distinct: std::collections::BTreeSet<&str> =
        finals.iter().map(|(_, l)| l.as_str()).collect();
    if finals.len() != 2 || distinct.len() != 1 {
        println!("--- dpo_example final lines differ between 1 and 2 processes: {finals:?}");
        failed.push("dpo_example final lines".into());
    } else {
        println!(
            "--- dpo_example: 1 and 2 processes print the same line: {}",
            finals[0].1
        );
    }
    println!(
        "mpi: {} passed, {} failed",
        RUNS.len() + 1 - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        eprintln!("failed: {failed:?}");
        std::process::exit(1);
    }
}

/// Runs `cmd`, killing it after `limit`; returns (success, stdout + stderr).
fn run_with_timeout(mut cmd: Command, limit: Duration) -> (bool, String) {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start: {e}")),
    };
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).ok();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("{text}\nkilled after {limit:?}")),
    }
}

// ------------------------------------------------------------------------------- ranks

fn rank_main(case: &str) {
    if case == "no_launcher" {
        no_launcher();
        return;
    }
    let mpi = MpiRuntime::init().expect("started by mpirun");
    if case != "rank_error" {
        // A failed assertion stops every rank at once (instead of a rank hanging in the
        // collective of a rank that is gone).
        mpi.abort_on_panic();
    }
    let reducer = mpi.reducer();
    match case {
        "grads_f64" => grads(&reducer, DType::F64),
        "grads_f32" => grads(&reducer, DType::F32),
        "module_grads" => module_grads(&reducer),
        "rank_error" => rank_error(&reducer),
        "length_mismatch" => length_mismatch(&reducer),
        "dpo_example" => dpo_example(&reducer),
        other => panic!("unknown case {other}"),
    }
    drop(reducer);
    drop(mpi);
}

/// The ranks as the peers of the shared cases: this rank runs its own shard.
struct Ranks {
    reducer: MpiReducer,
    shards: Vec<Range<usize>>,
}

impl Peers for Ranks {
    fn run(&self, d: &Data, step: &Step<'_>) -> (Vec<f64>, u64) {
        let before = self.reducer.calls();
        let shared = SharedReducer::new(self.reducer.clone());
        let w = d.param();
        let loss = step(&shared, &w, &self.shards[self.reducer.rank()]);
        let local = dp_cases::host(w.grad(&loss.backward()).unwrap());
        let total = shared.sum(&local).unwrap();
        let calls = self.reducer.calls() - before;
        // Every rank received the same totals: the sum of the ranks' totals is `W` times each
        // (exact for equal values).
        let w_times = shared.sum(&total).unwrap();
        let world = self.reducer.world_size() as f64;
        assert!(
            w_times.iter().zip(&total).all(|(s, t)| *s == world * t),
            "rank {}: the ranks received different gradients",
            self.reducer.rank()
        );
        (total, calls)
    }
}

fn grads(reducer: &MpiReducer, float: DType) {
    dp_cases::FLOAT.set(float);
    let ranks = Ranks {
        reducer: reducer.clone(),
        shards: dp_cases::shards(reducer.world_size()),
    };
    for (name, case) in [
        ("dpo", dp_cases::dpo as fn(&dyn Peers)),
        ("kto global KL", dp_cases::kto),
        ("bco", dp_cases::bco),
        ("grpo batch std", dp_cases::grpo),
        ("ppo whitening", dp_cases::ppo),
    ] {
        case(&ranks);
        if reducer.rank() == 0 {
            println!(
                "{name}: {} ranks, shards {:?}, {float:?}: the summed gradient equals the \
                 whole batch's to {:e}",
                reducer.world_size(),
                ranks.shards,
                dp_cases::tol()
            );
        }
    }
}

/// `sum_gradients` over a burn module: the ranks' shards of a least-squares batch, each
/// normalized by the global row count, sum to the whole batch's `GradientsParams`.
fn module_grads(reducer: &MpiReducer) {
    let device = Device::flex().autodiff();
    device.seed(7);
    let model: Linear = LinearConfig::new(4, 3).init(&device);
    let model = model.map(&mut dpo_mpi::common::params::ToF64);
    let n = 10;
    let mut rng = common::Rng::new(3);
    let x: Vec<f64> = (0..n * 4).map(|_| rng.range(-1.0, 1.0)).collect();
    let y: Vec<f64> = (0..n * 3).map(|_| rng.range(-1.0, 1.0)).collect();
    let loss = |rows: Range<usize>, count: usize| {
        let k = rows.len();
        let xs = Tensor::<2>::from_data(
            TensorData::new(x[rows.start * 4..rows.end * 4].to_vec(), [k, 4]),
            (&device, DType::F64),
        );
        let ys = Tensor::<2>::from_data(
            TensorData::new(y[rows.start * 3..rows.end * 3].to_vec(), [k, 3]),
            (&device, DType::F64),
        );
        (model.forward(xs) - ys)
            .square()
            .sum()
            .div_scalar(count as f64)
    };
    let whole = GradientsParams::from_grads(loss(0..n, n).backward(), &model);
    let shard = dpo_mpi::shard_range(n, reducer.world_size(), reducer.rank());
    let local = GradientsParams::from_grads(loss(shard, n).backward(), &model);
    let summed = sum_gradients(reducer, &model, local).unwrap();
    let flat = |g: &GradientsParams| -> Vec<f64> {
        let w = g.get::<2>(model.weight.id).unwrap();
        let b = g.get::<1>(model.bias.as_ref().unwrap().id).unwrap();
        let mut v = dp_cases::host(w);
        v.extend(dp_cases::host(b));
        v
    };
    dp_cases::FLOAT.set(DType::F64);
    dp_cases::assert_close(&flat(&summed), &flat(&whole), "sum_gradients over Linear");
    if reducer.rank() == 0 {
        println!(
            "sum_gradients: {} ranks, a Linear's summed GradientsParams equal the whole batch's",
            reducer.world_size()
        );
    }
}

/// A policy for the adapter: per-token log-probs `w * id - 1` of one scalar parameter.
#[derive(Module, Debug)]
struct Toy {
    w: Param<Tensor<1>>,
}

impl CausalLmLogps for Toy {
    fn token_logps(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> GatheredLogps {
        let logps = input_ids
            .float()
            .mul(self.w.val().reshape([1, 1]))
            .sub_scalar(1.0);
        GatheredLogps {
            logps,
            mask: labels.not_equal_elem(-100),
        }
    }
}

/// Rank 1's step fails on a shape error (before the reduction) after 1.5 s; rank 0 waits in
/// the step's reduction and must fail within a second of that, with rank 1's message.
fn rank_error(reducer: &MpiReducer) {
    let device = Device::flex().autodiff();
    let policy = Toy {
        w: Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.01f32], [1]),
            &device,
        )),
    };
    let model = PreferenceModel::<Toy, Toy>::new(policy, None, DpoLossConfig::new().init())
        .with_reducer(reducer.clone());
    let ids =
        |b: usize| Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; b * 3], [b, 3]), &device);
    let refs = |b: usize| Tensor::<1>::from_data(TensorData::new(vec![-3.0f32; b], [b]), &device);
    let rejected = if reducer.rank() == 1 { 3 } else { 4 };
    let input = PreferenceInput {
        chosen_ids: ids(4),
        chosen_labels: ids(4),
        rejected_ids: ids(rejected),
        rejected_labels: ids(rejected),
        ref_chosen_logps: Some(refs(4)),
        ref_rejected_logps: Some(refs(4)),
    };
    if reducer.rank() == 1 {
        std::thread::sleep(Duration::from_millis(1500));
    }
    // Both panics are expected and checked below: keep them out of the log.
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.step(input)));
    let waited = start.elapsed();
    let message = match result {
        Ok(_) => panic!("rank {}: the step should fail", reducer.rank()),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    let shape_error = "shape mismatch for `rejected_ids`";
    assert!(
        message.contains(shape_error),
        "rank {}: {message}",
        reducer.rank()
    );
    if reducer.rank() == 0 {
        assert!(message.contains("rank 1 failed"), "{message}");
        assert!(
            waited < Duration::from_millis(2500),
            "rank 0 waited {waited:?} (rank 1 failed after 1.5 s)"
        );
        println!(
            "rank_error: rank 0 failed {:.2} s after rank 1's error (rank 1 failed 1.5 s in; \
             rank 0 waited {waited:.2?} in all) with: {message}",
            waited.as_secs_f64() - 1.5
        );
    }
    // The group is broken on both ranks now.
    assert!(matches!(
        reducer.sum(&[1.0]),
        Err(Error::Collective { reason, .. }) if reason.contains("broken")
    ));
}

fn length_mismatch(reducer: &MpiReducer) {
    let local = vec![1.0; 2 + reducer.rank()];
    let err = reducer.sum(&local).unwrap_err();
    assert!(
        matches!(&err, Error::Collective { reason, .. } if reason.contains("different lengths (between 2 and 3 values")),
        "{err}"
    );
    // Still usable: the header round kept the ranks in step.
    let counts = reducer.reduce(&StepCounts::from_pairs(3)).unwrap();
    assert_eq!(counts.pairs, 6.0);
    if reducer.rank() == 0 {
        println!("length_mismatch: both ranks got: {err}");
    }
}

fn dpo_example(reducer: &MpiReducer) {
    let args = dpo_mpi::Args {
        steps: 5,
        batch: 9,
        sft_steps: 20,
        heldout: 64,
        d_model: 16,
        ..dpo_mpi::Args::default()
    };
    let s = dpo_mpi::run(&args, reducer).unwrap();
    assert!(
        s.max_rank_diff == 0.0,
        "ranks differ by {:e}",
        s.max_rank_diff
    );
    assert_eq!(
        s.reductions,
        2 * args.steps as u64,
        "two reductions per step"
    );
    // The reducer's own split (header round, data round) lies inside the example's timing
    // around the calls.
    let split = s.wait_seconds_per_step + s.data_seconds_per_step;
    assert!(
        split > 0.0 && split <= s.reduce_seconds_per_step,
        "waiting + moving {split:e} s vs {:e} s around the calls",
        s.reduce_seconds_per_step
    );
    if reducer.rank() == 0 {
        assert!(s.max_param_diff <= 1e-6, "{:e}", s.max_param_diff);
        assert!(s.max_param_move > 1e-4, "training moved the parameters");
        for line in dpo_mpi::report(&args, &s) {
            println!("{line}");
        }
    }
}

fn no_launcher() {
    let err = MpiRuntime::init().unwrap_err();
    assert!(
        matches!(&err, Error::Runtime { runtime: "MPI", reason } if reason.contains("not started by an MPI launcher") && reason.contains("mpirun -np")),
        "{err}"
    );
    println!("no_launcher: {err}");
}

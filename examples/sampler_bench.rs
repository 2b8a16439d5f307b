//! Sampler throughput: generated tokens per second for the examples' tiny transformer, with
//! a full forward per token (`Sampler::sample`) and with burn's autoregressive encoder cache
//! (`Sampler::sample_cached`).
//!
//! `cargo run --release --example sampler_bench -- [--rows 64,256] [--new-tokens 56]
//!   [--repeats 3]`
//!
//! Prints a markdown table. Nothing stops early (no stop id), so every row generates
//! `--new-tokens` tokens; the prompt is 8 tokens.

pub mod common;

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use burn_rlhf::generate::{Prompts, SamplerConfig};
use clap::Parser;
use common::rng::Rng;
use common::toy::{TinyLm, VOCAB};

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(about = "Sampler throughput, full forward vs KV cache")]
struct Args {
    /// Rows (prompts x samples) per call, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    rows: Vec<usize>,
    /// Generated tokens per row.
    #[arg(long, default_value_t = 56)]
    new_tokens: usize,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Timed calls per cell (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

pub fn main() {
    let args = Args::parse();
    let device = Device::flex();
    device.seed(0);
    const PROMPT_LEN: usize = 8;
    let model =
        TinyLm::with_max_len(args.d_model, 2, PROMPT_LEN + args.new_tokens, &device).valid();
    let mut rng = Rng(7);
    println!(
        "tiny transformer: d_model {}, 2 layers, vocab {VOCAB}; prompt {PROMPT_LEN} tokens, {} new tokens per row (flex, {} cores)",
        args.d_model,
        args.new_tokens,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| rows | full forward (tokens/s) | KV cache (tokens/s) | speed-up |");
    println!("|---:|---:|---:|---:|");
    for &rows in &args.rows {
        let prompts: Vec<Vec<i64>> = (0..rows)
            .map(|_| (0..PROMPT_LEN).map(|_| rng.below(VOCAB) as i64).collect())
            .collect();
        let prompts = Prompts::left_padded(&prompts, 0, &device);
        let sampler = SamplerConfig::new()
            .with_max_new_tokens(args.new_tokens)
            .init();
        let time = |cached: bool| {
            (0..args.repeats)
                .map(|seed| {
                    let start = Instant::now();
                    let g = if cached {
                        sampler.sample_cached(&model, &prompts, seed as u64)
                    } else {
                        sampler.sample(&model, &prompts, seed as u64)
                    };
                    let _ = g.completion_ids.into_data();
                    start.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let tokens = (rows * args.new_tokens) as f64;
        let (full, cached) = (time(false), time(true));
        println!(
            "| {rows} | {:.0} | {:.0} | {:.2}x |",
            tokens / full,
            tokens / cached,
            full / cached
        );
    }
}

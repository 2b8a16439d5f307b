//! The `ppo` example's training loop, shortened: the mean reward must rise well above chance
//! (1/8) within a few dozen PPO steps.

#[path = "../../examples/ppo.rs"]
pub mod ppo;

use burn::tensor::Device;

#[test]
fn ppo_toy_reward_rises() {
    let _serial = crate::serial();
    let history = ppo::train(
        &ppo::TrainOptions {
            steps: 30,
            batch: 64,
            log_every: 0,
            seed: 7,
        },
        &Device::flex(),
    );
    let mean = |h: &[(usize, f64, f64)]| h.iter().map(|x| x.1).sum::<f64>() / h.len() as f64;
    let first = mean(&history[..5]);
    let last = mean(&history[history.len() - 5..]);
    println!("reward: first 5 steps {first:.3}, last 5 steps {last:.3}");
    assert!(first < 0.4, "starts near chance (1/8), got {first}");
    assert!(
        last > first + 0.25,
        "reward must rise: {first:.3} -> {last:.3}"
    );
}

//! Runs a shortened `reward_model` example training (debug build) and checks that held-out
//! pairwise accuracy rises well above chance.

#[path = "../../examples/reward_model.rs"]
pub mod reward_model;

use burn::tensor::Device;

#[test]
fn reward_model_example_learns_the_rule() {
    let _serial = crate::serial();
    let cfg = reward_model::TrainConfig {
        steps: 60,
        batch_pairs: 32,
        eval_every: 20,
        heldout_pairs: 200,
        verbose: false,
        ..Default::default()
    };
    let history = reward_model::train(&cfg, &Device::flex());
    let (first, last) = (history.initial_accuracy(), history.final_accuracy());
    println!("held-out accuracy {first:.3} -> {last:.3}");
    assert!(
        last >= 0.9,
        "held-out accuracy only reached {last:.3} (from {first:.3})"
    );
    assert!(
        last > first + 0.1,
        "held-out accuracy did not rise: {first:.3} -> {last:.3}"
    );
    let first_loss = history.loss.first().unwrap().1;
    let last_loss = history.loss.last().unwrap().1;
    assert!(
        last_loss < first_loss,
        "loss did not fall: {first_loss} -> {last_loss}"
    );
}

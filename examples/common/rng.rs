//! The one seeded generator of the examples and tests (no dependency, independent of any
//! backend RNG): xorshift64 (shifts 13, 7, 17; Marsaglia 2003), the `dpo` example's generator.
//!
//! A module of `examples/common` (every example that draws data uses it); also included alone with
//! `#[path]` by `tests/common/mod.rs`, so it depends on nothing else of `examples/common`. The
//! library's own sampler draws its uniforms from a stateless splitmix64 hash
//! (`src/generate/sampler.rs`) and `ppo_update` shuffles minibatches with its own xorshift64*
//! (`src/rl/step/`): those are part of the library's results and stay there.
//!
//! Not for anything statistical beyond test data: xorshift64 fails some BigCrush tests.

/// xorshift64. `Rng(state)` starts from a raw non-zero state; [`Rng::new`] mixes a seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The generator for `seed` (the `dpo` example's seeding, so its figures stay as
    /// published). The one seed whose mix is 0 (a fixed point of xorshift) gets another state.
    pub fn new(seed: u64) -> Self {
        let state =
            0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_add(1).wrapping_mul(0x2545_F491_4F6C_DD1D);
        Rng(if state == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            state
        })
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `[0, 1)` (53 bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform in `0..n` (modulo bias negligible for small `n`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() <= p
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

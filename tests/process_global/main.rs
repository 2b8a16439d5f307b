//! Tests of process-wide state: the process-wide checked-mode switch (`set_checked_mode`) and
//! a counting global allocator. Each test holds [`SERIAL`] for its whole body, so neither sees
//! the other's state or allocations; the other test binaries never flip the process-wide mode
//! (they scope it per thread with `with_checked_mode`).

/// Held by every test of this binary for its whole body.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub mod checked_mode;
pub mod lm_head_memory;

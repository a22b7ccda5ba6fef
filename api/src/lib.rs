//! The code behind the `strato` command, as a library so that the fuzz
//! targets in `tests/fuzz/` reach the API servers' request parsing and
//! validation without a socket or a VM. The binary (`main.rs`) only parses
//! the command line and calls into it.

pub mod client;
pub mod cpu_config;
pub mod daemon;
pub mod firecracker;
pub mod http;
pub mod jail;
pub mod logger;
pub mod metrics;
pub mod run;
mod terminal;
pub mod vm_api;

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

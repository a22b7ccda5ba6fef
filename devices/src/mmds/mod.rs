//! The microVM metadata service (MMDS), as Firecracker's clients use it:
//! a JSON store the host fills through the API and the guest reads over
//! HTTP at a link-local address (169.254.169.254 unless configured) on the
//! NICs it is enabled for.

mod stack;
mod store;
#[cfg(test)]
mod tests;

pub use stack::{is_for, MmdsNet, MmdsStack};
pub use store::{GuestRequest, GuestResponse, Mmds, MmdsVersion, StoreError, DEFAULT_SIZE_LIMIT};

/// The address the guest reaches the service at unless configured.
pub const DEFAULT_IPV4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

//! Counters a device keeps for the VMM's metrics: only ever increased, read
//! at any time from another thread (the metrics writer reports how much
//! each grew since its last report, as Firecracker's metrics do).

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A set of counters with Firecracker's names for them.
pub trait Counters: Send + Sync {
    /// Each counter's name and total.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// Defines a struct of [`Counter`]s and its [`Counters`] list.
#[macro_export]
macro_rules! counters {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $crate::metrics::Counter,)*
        }

        impl $crate::metrics::Counters for $name {
            fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.get()),)*]
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    counters!(
        /// Two counters.
        Pair {
            /// First.
            a,
            /// Second.
            b,
        }
    );

    #[test]
    fn counters_add_and_list_under_their_names() {
        let p = Pair::default();
        p.a.inc();
        p.b.add(5);
        p.a.inc();
        assert_eq!(p.counters(), vec![("a", 2), ("b", 5)]);
    }
}

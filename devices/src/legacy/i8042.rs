//! i8042 keyboard controller, reduced to what a microVM needs: the CPU
//! reset line, which ends the VM.

use vm_superio::{I8042Device, Trigger};

use crate::BusDevice;

/// The i8042 on ports 0x60..=0x64; `T` is told when the guest pulses reset.
pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// A controller that calls `reset` when the guest asks for a CPU reset.
    pub fn new(reset: T) -> Self {
        I8042 {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.inner.write(off, value) {
                log::error!("i8042: cannot signal the reset: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Count(Arc<AtomicU32>);
    impl Trigger for Count {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn reset_command_triggers() {
        let c = Count::default();
        let mut d = I8042::new(c.clone());
        d.write(4, &[0xfe]);
        d.write(4, &[0xaa]);
        d.write(0, &[0xfe]);
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        let mut b = [0xffu8];
        d.read(4, &mut b);
        assert_eq!(b[0], 0);
    }
}

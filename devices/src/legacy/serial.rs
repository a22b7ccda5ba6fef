//! 8250 UART on the port I/O bus, over vm-superio's emulation.

use std::io::Write;

use log::warn;
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::{BusDevice, EventFdTrigger};

/// Tells the input side when the guest has drained the receive FIFO, so it
/// can resume reading its source (flow control instead of dropping bytes).
pub struct SerialInputEvents {
    buffer_empty: EventFd,
}

impl SerialInputEvents {
    /// Signals `buffer_empty` whenever the receive FIFO becomes empty.
    pub fn new(buffer_empty: EventFd) -> Self {
        SerialInputEvents { buffer_empty }
    }
}

impl SerialEvents for SerialInputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.buffer_empty.write(1) {
            warn!("serial: cannot signal an empty input buffer: {e}");
        }
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, SerialInputEvents, Box<dyn Write + Send>>;

/// A UART whose output goes to a writer and whose interrupt is an irqfd.
pub struct Serial {
    uart: Uart,
    output_failed: bool,
}

impl Serial {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: EventFd, events: SerialInputEvents, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::with_events(EventFdTrigger::new(irq), events, out),
            output_failed: false,
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                warn!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte registers; wider accesses read the first one.
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(off, value) {
            // A closed terminal must not stop the guest; say so once.
            if !self.output_failed {
                warn!("serial: output lost: {e:?}");
                self.output_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Sink, EventFd, EventFd) {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let empty = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let s = Serial::new(
            irq.try_clone().unwrap(),
            SerialInputEvents::new(empty.try_clone().unwrap()),
            Box::new(sink.clone()),
        );
        (s, sink, irq, empty)
    }

    #[test]
    fn output_reaches_the_writer() {
        let (mut s, sink, _, _) = serial();
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn input_is_read_back_and_signals_empty() {
        let (mut s, _, irq, empty) = serial();
        // Enable the received-data interrupt.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'a');
        s.read(0, &mut b);
        assert_eq!(b[0], b'b');
        assert_eq!(empty.read().unwrap(), 1);
        assert!(s.input_capacity() > 0);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut s, _, _, _) = serial();
        s.write(0, &[]);
        s.read(0, &mut []);
        s.write(1 << 40, &[1]);
    }
}

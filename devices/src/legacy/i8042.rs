//! i8042 PS/2 controller with a keyboard, reduced to what a microVM needs:
//! the CPU reset line (the usual way Linux reboots without ACPI) and a
//! keyboard that can deliver Ctrl-Alt-Del, so a host can ask a guest to
//! shut down. vm-superio's i8042 only models the reset line, hence this one.

use std::collections::VecDeque;

use log::warn;
use vm_superio::Trigger;

use crate::BusDevice;

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

// Status register bits.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_UNLOCKED: u8 = 0x10;

// Control ("command byte") bits.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_KBD_DISABLE: u8 = 0x10;
const CB_AUX_DISABLE: u8 = 0x20;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_PULSE_RESET: u8 = 0xfe;

// Keyboard commands and replies.
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_SET_LEDS: u8 = 0xed;
const KBD_SET_SCANCODE: u8 = 0xf0;
const KBD_SET_RATE: u8 = 0xf3;

/// Scancode set 2 for LCtrl, LAlt, Del pressed, then released.
pub const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // make: LCtrl, LAlt, Del
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // break: Del, LAlt, LCtrl
];

/// Longest output the controller buffers for the guest.
const BUFFER_LEN: usize = 32;

/// The controller. `R` is told when the guest pulses the reset line, `I`
/// raises the keyboard interrupt (IRQ 1).
pub struct I8042<R: Trigger, I: Trigger> {
    reset: R,
    irq: I,
    status: u8,
    control: u8,
    /// Controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// Keyboard command waiting for its argument byte.
    pending_kbd: Option<u8>,
    output: VecDeque<u8>,
}

impl<R: Trigger, I: Trigger> I8042<R, I> {
    /// A controller with the keyboard enabled and its interrupt on.
    pub fn new(reset: R, irq: I) -> Self {
        I8042 {
            reset,
            irq,
            status: SB_SYSTEM | SB_KBD_UNLOCKED,
            control: CB_KBD_INT | CB_POST_OK,
            pending_cmd: None,
            pending_kbd: None,
            output: VecDeque::with_capacity(BUFFER_LEN),
        }
    }

    /// Queues the Ctrl-Alt-Del key sequence for the guest.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), String> {
        let seq = &CTRL_ALT_DEL;
        if self.output.len() + seq.len() > BUFFER_LEN {
            return Err("the guest is not reading its keyboard".into());
        }
        for b in seq {
            self.push(*b);
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < BUFFER_LEN {
            self.output.push_back(byte);
        }
        self.update();
    }

    fn update(&mut self) {
        if self.output.is_empty() {
            self.status &= !SB_OUT_FULL;
        } else {
            self.status |= SB_OUT_FULL;
            if self.control & CB_KBD_INT != 0 {
                if let Err(e) = self.irq.trigger() {
                    warn!("i8042: cannot raise the keyboard interrupt: {e:?}");
                }
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT => self.pending_cmd = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            // The enable bits live in the control byte, where drivers check
            // them after these commands.
            CMD_AUX_DISABLE => self.control |= CB_AUX_DISABLE,
            CMD_AUX_ENABLE => self.control &= !CB_AUX_DISABLE,
            CMD_KBD_DISABLE => self.control |= CB_KBD_DISABLE,
            CMD_KBD_ENABLE => self.control &= !CB_KBD_DISABLE,
            CMD_KBD_TEST => self.push(0x00),
            CMD_READ_OUTP => self.push(0x01),
            CMD_PULSE_RESET => {
                if let Err(e) = self.reset.trigger() {
                    warn!("i8042: cannot signal the reset: {e:?}");
                }
            }
            // Anything else is accepted and ignored.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        if let Some(cmd) = self.pending_cmd.take() {
            match cmd {
                CMD_WRITE_CTR => self.control = value,
                // Bit 0 of the output port is the CPU reset line (active low).
                CMD_WRITE_OUTP if value & 1 == 0 => {
                    if let Err(e) = self.reset.trigger() {
                        warn!("i8042: cannot signal the reset: {e:?}");
                    }
                }
                CMD_WRITE_KBD_OUT => self.push(value),
                _ => {}
            }
            return;
        }
        if self.pending_kbd.take().is_some() {
            self.push(KBD_ACK);
            return;
        }
        match value {
            KBD_RESET => {
                self.output.clear();
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_OK);
            }
            KBD_IDENTIFY => {
                self.push(KBD_ACK);
                self.push(0xab);
                self.push(0x83);
            }
            KBD_SET_LEDS | KBD_SET_SCANCODE | KBD_SET_RATE => {
                self.pending_kbd = Some(value);
                self.push(KBD_ACK);
            }
            _ => self.push(KBD_ACK),
        }
    }
}

impl<R: Trigger + Send, I: Trigger + Send> BusDevice for I8042<R, I> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            OFFSET_DATA => {
                let v = self.output.pop_front().unwrap_or(0);
                self.update();
                v
            }
            OFFSET_COMMAND => self.status,
            _ => 0xff,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            OFFSET_DATA => self.data(value),
            OFFSET_COMMAND => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::Count;

    fn dev() -> (I8042<Count, Count>, Count, Count) {
        let (r, i) = (Count::default(), Count::default());
        (I8042::new(r.clone(), i.clone()), r, i)
    }

    fn read(d: &mut I8042<Count, Count>, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_by_command_and_output_port() {
        let (mut d, reset, _) = dev();
        d.write(4, &[CMD_PULSE_RESET]);
        assert_eq!(reset.get(), 1);
        d.write(4, &[CMD_WRITE_OUTP]);
        d.write(0, &[0xfe]);
        assert_eq!(reset.get(), 2);
        d.write(4, &[CMD_WRITE_OUTP]);
        d.write(0, &[0x01]);
        assert_eq!(reset.get(), 2);
    }

    #[test]
    fn ctrl_alt_del_reaches_the_data_port_with_an_interrupt() {
        let (mut d, _, irq) = dev();
        assert_eq!(read(&mut d, 4) & SB_OUT_FULL, 0);
        d.trigger_ctrl_alt_del().unwrap();
        assert!(irq.get() > 0);
        let mut got = Vec::new();
        while read(&mut d, 4) & SB_OUT_FULL != 0 {
            got.push(read(&mut d, 0));
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn keyboard_and_controller_commands_answer() {
        let (mut d, _, _) = dev();
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, 0), 0x55);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0), CB_KBD_INT | CB_POST_OK);
        d.write(4, &[CMD_AUX_DISABLE]);
        d.write(4, &[CMD_READ_CTR]);
        assert_ne!(read(&mut d, 0) & CB_AUX_DISABLE, 0);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0), 0);
        d.write(0, &[KBD_RESET]);
        assert_eq!(
            (read(&mut d, 0), read(&mut d, 0)),
            (KBD_ACK, KBD_SELF_TEST_OK)
        );
        d.write(0, &[KBD_SET_LEDS]);
        d.write(0, &[0x07]);
        assert_eq!((read(&mut d, 0), read(&mut d, 0)), (KBD_ACK, KBD_ACK));
        assert_eq!(read(&mut d, 4) & SB_OUT_FULL, 0);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut d, _, _) = dev();
        assert!(d.trigger_ctrl_alt_del().is_ok());
        assert!(d.trigger_ctrl_alt_del().is_ok());
        assert!(d.trigger_ctrl_alt_del().is_err());
        for _ in 0..100 {
            d.write(0, &[0xee]);
        }
        assert!(d.output.len() <= BUFFER_LEN);
    }
}

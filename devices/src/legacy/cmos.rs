//! The PC's CMOS real-time clock (an MC146818 at ports 0x70-0x71): what an
//! x86 guest sets its wall clock from at boot (Linux's `rtc_cmos` with
//! `RTC_HCTOSYS`, `hwclock`). Without it a guest keeps only the time its
//! kernel read from kvmclock early in boot, and a kernel that counts ticks
//! until its clocksource is up comes up behind the host by every tick it
//! missed. vm-superio has no model of this clock, hence this one.
//!
//! The clock runs from the host's time plus an offset the guest may set;
//! the rest of the 128 bytes are plain NVRAM. No interrupts are raised
//! (no alarm, periodic or update-ended interrupt), and an update is never
//! in progress, so a reader never waits.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

const OFFSET_INDEX: u64 = 0;
const OFFSET_DATA: u64 = 1;
/// The index register's top bit masks NMIs on a PC; the index is below.
const INDEX_MASK: u8 = 0x7f;

// Register indexes.
const REG_SECONDS: usize = 0x00;
const ALARM_SECONDS: usize = 0x01;
const ALARM_MINUTES: usize = 0x03;
const ALARM_HOURS: usize = 0x05;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// Where PCs (and the FADT's `century` field) keep the century.
pub const REG_CENTURY: usize = 0x32;

/// Status A: the 32.768 kHz time base and a 1024 Hz rate; bit 7 (update
/// in progress) is never set.
const A_DEFAULT: u8 = 0x26;
const A_UIP: u8 = 0x80;
/// Status B bits.
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// Status D: the battery is good (the time is valid).
const D_VRT: u8 = 0x80;
/// The 12-hour format's PM flag in the hours register.
const HOURS_PM: u8 = 0x80;

/// A source of the host's time in seconds since the epoch.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// The clock and its NVRAM.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Guest time minus host time, in seconds: what the guest set.
    offset: i64,
    /// The time registers while the guest holds the clock (status B's SET
    /// bit): reads and writes go here, and clearing SET makes them the
    /// time.
    held: Option<[u8; 10]>,
    now: Clock,
}

impl Cmos {
    /// A clock that reads as the host's time until the guest sets it.
    pub fn new() -> Self {
        Self::with_clock(Box::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }))
    }

    /// A clock that runs from `now` (for tests).
    pub fn with_clock(now: Clock) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A] = A_DEFAULT;
        // Linux on x86 reads the time registers as BCD whatever the data
        // mode bit says, and so does every PC BIOS: BCD, 24-hour.
        nvram[REG_B] = B_24H;
        nvram[REG_D] = D_VRT;
        Cmos {
            index: 0,
            nvram,
            offset: 0,
            held: None,
            now,
        }
    }

    fn guest_time(&self) -> i64 {
        (self.now)().saturating_add(self.offset)
    }

    /// The time registers (0x00-0x09) for `t`, in the format status B
    /// asks for.
    fn time_registers(&self, t: i64) -> [u8; 10] {
        let b = self.nvram[REG_B];
        let enc = |v: u8| if b & B_BINARY != 0 { v } else { to_bcd(v) };
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let hour = (secs / 3600) as u8;
        let hours = if b & B_24H != 0 {
            enc(hour)
        } else {
            // 12-hour: 12, 1 .. 11, with the PM flag from noon.
            let h12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            enc(h12) | if hour >= 12 { HOURS_PM } else { 0 }
        };
        let mut r = [0u8; 10];
        r[REG_SECONDS] = enc((secs % 60) as u8);
        r[REG_MINUTES] = enc((secs / 60 % 60) as u8);
        r[REG_HOURS] = hours;
        // 1 is Sunday; 1970-01-01 was a Thursday.
        r[REG_WEEKDAY] = enc(((days + 4).rem_euclid(7) + 1) as u8);
        r[REG_DAY] = enc(day);
        r[REG_MONTH] = enc(month);
        r[REG_YEAR] = enc(year.rem_euclid(100) as u8);
        // The alarm registers in between are NVRAM.
        for alarm in [ALARM_SECONDS, ALARM_MINUTES, ALARM_HOURS] {
            r[alarm] = self.nvram[alarm];
        }
        r
    }

    /// The time `r` names, in the format status B gives, if it is a time.
    fn time_from_registers(&self, r: &[u8; 10], century: u8) -> Option<i64> {
        let b = self.nvram[REG_B];
        let dec = |v: u8| {
            if b & B_BINARY != 0 {
                Some(v)
            } else {
                from_bcd(v)
            }
        };
        let hour = if b & B_24H != 0 {
            dec(r[REG_HOURS])?
        } else {
            let h = dec(r[REG_HOURS] & !HOURS_PM)? % 12;
            h + if r[REG_HOURS] & HOURS_PM != 0 { 12 } else { 0 }
        };
        let (sec, min) = (dec(r[REG_SECONDS])?, dec(r[REG_MINUTES])?);
        let (day, month) = (dec(r[REG_DAY])?, dec(r[REG_MONTH])?);
        let year = i64::from(dec(century)?) * 100 + i64::from(dec(r[REG_YEAR])?);
        if sec > 59 || min > 59 || hour > 23 || !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        if u32::from(day) > days_in_month(year, month) {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Some(days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec))
    }

    fn read_register(&mut self, reg: usize) -> u8 {
        match reg {
            ALARM_SECONDS | ALARM_MINUTES | ALARM_HOURS => self.nvram[reg],
            REG_SECONDS..=REG_YEAR => match &self.held {
                Some(r) => r[reg],
                None => self.time_registers(self.guest_time())[reg],
            },
            REG_CENTURY if self.held.is_some() => self.nvram[REG_CENTURY],
            REG_CENTURY => {
                let year = civil_from_days(self.guest_time().div_euclid(86_400)).0;
                let century = year.div_euclid(100).clamp(0, 99) as u8;
                if self.nvram[REG_B] & B_BINARY != 0 {
                    century
                } else {
                    to_bcd(century)
                }
            }
            REG_A => self.nvram[REG_A] & !A_UIP,
            // No interrupt is ever pending; reading would clear the flags.
            REG_C => 0,
            REG_D => D_VRT,
            _ => self.nvram[reg],
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            // The alarm registers: plain storage (no alarm ever fires).
            ALARM_SECONDS | ALARM_MINUTES | ALARM_HOURS => self.nvram[reg] = value,
            REG_SECONDS..=REG_YEAR => {
                let now = self.guest_time();
                let mut r = self.held.unwrap_or_else(|| self.time_registers(now));
                r[reg] = value;
                if self.held.is_some() {
                    self.held = Some(r);
                } else {
                    // A field written while the clock runs: the clock
                    // takes the time with that field changed.
                    let century = self.read_register(REG_CENTURY);
                    self.set_time(&r, century);
                }
            }
            REG_B => {
                let was_held = self.nvram[REG_B] & B_SET != 0;
                let holds = value & B_SET != 0;
                if holds && !was_held {
                    // The century register is held with the others.
                    self.nvram[REG_CENTURY] = self.read_register(REG_CENTURY);
                    self.held = Some(self.time_registers(self.guest_time()));
                }
                // The registers were written in the old format; the new
                // one applies from here on.
                if !holds && was_held {
                    if let Some(r) = self.held.take() {
                        let century = self.nvram[REG_CENTURY];
                        self.set_time(&r, century);
                    }
                }
                self.nvram[REG_B] = value;
            }
            REG_A => self.nvram[REG_A] = value & !A_UIP,
            REG_C | REG_D => {}
            REG_CENTURY => {
                self.nvram[REG_CENTURY] = value;
                if self.held.is_none() {
                    let r = self.time_registers(self.guest_time());
                    self.set_time(&r, value);
                }
            }
            _ => self.nvram[reg] = value,
        }
    }

    /// Makes `r` (with `century`) the guest's time; registers that name no
    /// time leave the clock as it was.
    fn set_time(&mut self, r: &[u8; 10], century: u8) {
        if let Some(t) = self.time_from_registers(r, century) {
            self.offset = t.saturating_sub((self.now)());
        }
        self.nvram[REG_CENTURY] = century;
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (OFFSET_INDEX, 1) => self.index,
            (OFFSET_DATA, 1) => self.read_register(usize::from(self.index)),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (OFFSET_INDEX, [v]) => self.index = v & INDEX_MASK,
            (OFFSET_DATA, [v]) => self.write_register(usize::from(self.index), *v),
            _ => {}
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    (v / 10) << 4 | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0xf);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the usual
/// era-of-400-years arithmetic, valid for any year).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// 2026-12-06 11:54:11 UTC, a Sunday.
    const T0: i64 = 1_796_558_051;

    fn clock() -> (Cmos, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(T0));
        let n = now.clone();
        (
            Cmos::with_clock(Box::new(move || n.load(Ordering::SeqCst))),
            now,
        )
    }

    fn get(c: &mut Cmos, reg: u8) -> u8 {
        c.write(OFFSET_INDEX, &[reg]);
        let mut v = [0u8];
        c.read(OFFSET_DATA, &mut v);
        v[0]
    }

    fn put(c: &mut Cmos, reg: u8, value: u8) {
        c.write(OFFSET_INDEX, &[reg | 0x80]);
        c.write(OFFSET_DATA, &[value]);
    }

    fn date(c: &mut Cmos) -> [u8; 8] {
        [0x32, 9, 8, 7, 4, 2, 0, 6].map(|r| get(c, r))
    }

    #[test]
    fn reads_the_host_time_in_bcd_24_hour() {
        let (mut c, now) = clock();
        // Century, year, month, day, hours, minutes, seconds, weekday.
        assert_eq!(date(&mut c), [0x20, 0x26, 0x12, 0x06, 0x11, 0x54, 0x11, 1]);
        now.store(T0 + 86_400 * 365 + 12 * 3600, Ordering::SeqCst);
        assert_eq!(date(&mut c), [0x20, 0x27, 0x12, 0x06, 0x23, 0x54, 0x11, 2]);
        assert_eq!(get(&mut c, 0x0a) & A_UIP, 0, "never in an update");
        assert_eq!(get(&mut c, 0x0d), D_VRT, "the time is valid");
        assert_eq!(get(&mut c, 0x0c), 0, "no interrupt pending");
    }

    #[test]
    fn binary_and_12_hour_formats_follow_status_b() {
        let (mut c, _) = clock();
        put(&mut c, 0x0b, B_BINARY);
        assert_eq!(date(&mut c), [20, 26, 12, 6, 11, 54, 11, 1]);
        put(&mut c, 0x0b, 0);
        // 11 am in BCD without the PM flag.
        assert_eq!(get(&mut c, 4), 0x11);
        let (mut pm, now) = clock();
        now.store(T0 + 3 * 3600, Ordering::SeqCst);
        put(&mut pm, 0x0b, 0);
        assert_eq!(get(&mut pm, 4), 0x02 | HOURS_PM);
    }

    #[test]
    fn a_time_set_by_the_guest_keeps_running_from_there() {
        let (mut c, now) = clock();
        // What Linux does: hold the clock, write every field, let go.
        put(&mut c, 0x0b, B_SET | B_24H);
        for (reg, v) in [
            (0, 0x30),
            (2, 0x15),
            (4, 0x08),
            (7, 0x29),
            (8, 0x02),
            (9, 0x28),
        ] {
            put(&mut c, reg, v);
        }
        put(&mut c, 0x32, 0x20);
        assert_eq!(get(&mut c, 0), 0x30, "held registers read back");
        put(&mut c, 0x0b, B_24H);
        assert_eq!(
            date(&mut c)[..7],
            [0x20, 0x28, 0x02, 0x29, 0x08, 0x15, 0x30]
        );
        now.fetch_add(90, Ordering::SeqCst);
        assert_eq!(
            date(&mut c)[..7],
            [0x20, 0x28, 0x02, 0x29, 0x08, 0x17, 0x00]
        );
        // A date that does not exist leaves the clock as it was.
        put(&mut c, 0x0b, B_SET | B_24H);
        put(&mut c, 7, 0x31);
        put(&mut c, 0x0b, B_24H);
        assert_eq!(get(&mut c, 7), 0x29);
    }

    #[test]
    fn nvram_keeps_what_is_written_and_odd_accesses_are_harmless() {
        let (mut c, _) = clock();
        put(&mut c, 0x40, 0xab);
        put(&mut c, 0x01, 0x59);
        assert_eq!(get(&mut c, 0x40), 0xab);
        assert_eq!(get(&mut c, 0x01), 0x59);
        put(&mut c, 0x0b, B_SET | B_24H);
        put(&mut c, 0x03, 0x07);
        assert_eq!(get(&mut c, 0x03), 0x07, "an alarm register while held");
        put(&mut c, 0x0b, B_24H);
        assert_eq!((get(&mut c, 0x01), get(&mut c, 0x03)), (0x59, 0x07));
        let mut two = [0u8; 2];
        c.read(OFFSET_DATA, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        c.write(OFFSET_DATA, &[1, 2]);
        c.write(7, &[1]);
        // Writes to the flags registers change nothing.
        put(&mut c, 0x0c, 0xff);
        put(&mut c, 0x0d, 0);
        assert_eq!((get(&mut c, 0x0c), get(&mut c, 0x0d)), (0, D_VRT));
    }

    #[test]
    fn calendar_arithmetic_round_trips() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}

/*
 * acpi: reads the ACPI tables the way a kernel does and uses the FADT's
 * registers. Finds the RSDP in 0xe0000-0xfffff, follows the XSDT to every
 * table, checks each checksum, and prints:
 *   acpi: rsdp <hex>                       (or "acpi: no rsdp", then returns)
 *   acpi: table <SIG> len <n> ok|bad-checksum   (each XSDT entry, and the DSDT)
 *   acpi: madt cpus <n> ioapics <n>
 *   acpi: fadt flags <hex> sleep <port> reset <port>=<value>
 * then does action=<...>:
 *   poweroff (default)  SLP_TYP=S5 | SLP_EN to the sleep control register
 *   reset               the reset value to the reset register
 *   nonsense            1000 rounds of writes a VMM must shrug off (sleep
 *                       states it does not offer, wrong reset values, wide
 *                       writes, writes to the read-only GED register), prints
 *                       "acpi: survived nonsense", then powers off
 *   button              unmasks the GED's IOAPIC pin (gsi=<n>, default 23;
 *                       as a GED driver does, and how the VMM tells that
 *                       the guest listens; interrupts stay off here), then
 *                       polls the GED event register (port ged=<hex>,
 *                       default 0x604) until the power-button bit comes or
 *                       timeout=<ms> passes: "acpi: power button" then
 *                       power-off, or "acpi: no power button"
 *   cpus                as button, and also acts for the CPU hotplug bit:
 *                       prints "acpi: madt possible <n>" (enabled and
 *                       online-capable local APICs), then on each CPU event
 *                       walks the CPU hotplug controller (port cpuhp=<hex>,
 *                       default 0x608) as the DSDT's CSCN does, acknowledging
 *                       "acpi: cpu <id> plugged" and ejecting each vCPU asked
 *                       back, "acpi: cpu <id> ejected", then "acpi: cpu scan
 *                       done"; the power button powers off
 * If a power-off or reset write returns, it prints "acpi: still running".
 */
#include "lib.h"

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* Routes IOAPIC pin `gsi` to vector 0x30 on APIC 0, edge, unmasked. */
static void ioapic_unmask(uint32_t gsi)
{
    volatile uint32_t *ioapic = (volatile uint32_t *)0xfec00000;
    ioapic[0] = 0x10 + 2 * gsi + 1;
    ioapic[4] = 0;
    ioapic[0] = 0x10 + 2 * gsi;
    ioapic[4] = 0x30;
}

static uint32_t le32(const uint8_t *p)
{
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return le32(p) | (uint64_t)le32(p + 4) << 32;
}

static bool sum_ok(const uint8_t *p, uint32_t len)
{
    uint8_t s = 0;
    for (uint32_t i = 0; i < len; i++)
        s += p[i];
    return s == 0;
}

static void report(const uint8_t *t)
{
    uint32_t len = le32(t + 4);
    print("acpi: table %c%c%c%c len %d %s\n", t[0], t[1], t[2], t[3], (int)len,
          sum_ok(t, len) ? "ok" : "bad-checksum");
}

/* Local APICs enabled or online capable: the vCPUs the VM can have. */
static int possible;

static void madt(const uint8_t *t)
{
    uint32_t len = le32(t + 4);
    int cpus = 0, ioapics = 0;
    for (uint32_t at = 44; at + 2 <= len && t[at + 1] >= 2; at += t[at + 1]) {
        if (t[at] == 0 && (le32(t + at + 4) & 3))
            possible++;
        if (t[at] == 0 && (le32(t + at + 4) & 1))
            cpus++;
        else if (t[at] == 1)
            ioapics++;
    }
    print("acpi: madt cpus %d ioapics %d\n", cpus, ioapics);
}

void guest_main(void)
{
    const uint8_t *rsdp = 0;
    for (uintptr_t a = 0xe0000; a < 0x100000; a += 16) {
        if (memcmp((const void *)a, "RSD PTR ", 8) == 0 && sum_ok((const uint8_t *)a, 20)) {
            rsdp = (const uint8_t *)a;
            break;
        }
    }
    if (!rsdp) {
        print("acpi: no rsdp\n");
        return;
    }
    print("acpi: rsdp %lx\n", (uint64_t)(uintptr_t)rsdp);
    const uint8_t *xsdt = (const uint8_t *)(uintptr_t)le64(rsdp + 24);
    report(xsdt);
    const uint8_t *fadt = 0;
    for (uint32_t at = 36; at + 8 <= le32(xsdt + 4); at += 8) {
        const uint8_t *t = (const uint8_t *)(uintptr_t)le64(xsdt + at);
        report(t);
        if (memcmp(t, "FACP", 4) == 0)
            fadt = t;
        if (memcmp(t, "APIC", 4) == 0)
            madt(t);
    }
    if (!fadt) {
        print("acpi: no fadt\n");
        return;
    }
    report((const uint8_t *)(uintptr_t)le64(fadt + 140));
    uint16_t sleep = (uint16_t)le64(fadt + 248);
    uint16_t reset = (uint16_t)le64(fadt + 120);
    uint8_t reset_value = fadt[128];
    print("acpi: fadt flags %lx sleep %lx reset %lx=%lx\n", (uint64_t)le32(fadt + 112),
          (uint64_t)sleep, (uint64_t)reset, (uint64_t)reset_value);
    /* SLP_TYP in bits 2-4, SLP_EN bit 5; S5 is the \_S5 value, 5. */
    uint8_t s5 = (5 << 2) | (1 << 5);

    if (arg_eq("action", "reset")) {
        outb(reset, reset_value);
    } else if (arg_eq("action", "nonsense")) {
        uint16_t ged = (uint16_t)arg_u64("ged", 0x604);
        for (int i = 0; i < 1000; i++) {
            outb(sleep, (3 << 2) | (1 << 5));  /* S3: not offered */
            outb(sleep, (uint8_t)i & ~(1 << 5));
            outb(sleep + 1, 0xff);
            outb(reset, reset_value + 1 + (i % 200));
            outl(reset, 0xffffffff);
            outl(sleep, 0xffffffff);
            outb(ged, 0xff);
            (void)inb(ged);
            (void)inb(sleep + 1);
        }
        print("acpi: survived nonsense\n");
        outb(sleep, s5);
    } else if (arg_eq("action", "button")) {
        uint16_t ged = (uint16_t)arg_u64("ged", 0x604);
        ioapic_unmask((uint32_t)arg_u64("gsi", 23));
        print("acpi: waiting for the power button\n");
        uint64_t dl = deadline_ms(arg_u64("timeout", 10000));
        bool pressed = false;
        while (!pressed && !expired(dl))
            pressed = inb(ged) & 1;
        if (!pressed) {
            print("acpi: no power button\n");
            return;
        }
        print("acpi: power button\n");
        outb(sleep, s5);
    } else if (arg_eq("action", "cpus")) {
        uint16_t ged = (uint16_t)arg_u64("ged", 0x604);
        uint16_t hp = (uint16_t)arg_u64("cpuhp", 0x608);
        ioapic_unmask((uint32_t)arg_u64("gsi", 23));
        print("acpi: madt possible %d\n", possible);
        print("acpi: waiting for cpu events\n");
        uint64_t dl = deadline_ms(arg_u64("timeout", 10000));
        while (!expired(dl)) {
            uint8_t ev = inb(ged);
            if (ev & 1) {
                print("acpi: power button\n");
                outb(sleep, s5);
                break;
            }
            if (!(ev & 2))
                continue;
            for (int id = 0; id < possible; id++) {
                outl(hp, (uint32_t)id);
                uint8_t st = inb(hp + 4);
                if (st & 2) {
                    outb(hp + 4, 2);
                    print("acpi: cpu %d plugged\n", id);
                }
                if (st & 4) {
                    outb(hp + 4, 4);
                    outb(hp + 4, 8);
                    print("acpi: cpu %d ejected\n", id);
                }
            }
            print("acpi: cpu scan done\n");
        }
    } else {
        outb(sleep, s5);
    }
    print("acpi: still running\n");
}
